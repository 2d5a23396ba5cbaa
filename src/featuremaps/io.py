"""IO: the only module that writes files.

Last stage of the flow (… → render → **io**). An :class:`OutputFolder` collects every file of a run
in a hidden staging folder beside the target and moves it into place in one step on
:meth:`OutputFolder.commit`, so a reader never sees a mix of an old and a new run, and a failed run
leaves the previous results untouched. File names derived from layer names are made safe here
(no separators, no ``..``, unique), and every path is checked to stay inside the output folder.

A folder is only ever replaced when it is empty or holds a ``manifest.json`` written by this tool;
anything else may be the user's own files and is refused.

An output folder of a model with random weights is given the mark (``OutputFolder(out, mark=...)``)
and puts it into every picture it writes, whoever encoded it: a PNG gets an ``iTXt`` text chunk
keyed :data:`~featuremaps.manifest.MARK_KEY`, a JPEG a comment, and ``.safetensors`` arrays get
it in their metadata. So no picture leaves without it,
even one a new command adds; the visible stamp is drawn by the render stage.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import re
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import torch

from featuremaps._errors import OutputError
from featuremaps.manifest import MANIFEST, MARK_KEY, OUTPUT_FILES, TOOL

orjson: Any
try:  # numbers to text 7-8x faster than json, the same shortest digits (see _float_text)
    import orjson
except ImportError:  # pragma: no cover - a platform without its wheels: the json module
    orjson = None

__all__ = [
    "DiskArray",
    "OutputFolder",
    "SafetensorsStream",
    "WorkFolder",
    "dump_json",
    "folder_size",
    "marked",
    "parquet_available",
    "safe_filename",
    "update_run_folder",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(index: int, name: str, suffix: str = ".png", max_len: int = 80) -> str:
    """A file name for record ``name`` that is safe on every filesystem and in a URL.

    The execution index prefix keeps names unique and in network order even when two layer names
    sanitise to the same text; ``#`` (a URL fragment marker) and every other unusual character
    become ``_``; leading dots are dropped so nothing is hidden or means "parent folder".
    """
    stem = _UNSAFE.sub("_", name).replace("..", "_").lstrip("._-")[:max_len].rstrip(".")
    stem = stem or "output"
    return f"{index:04d}_{stem}{suffix}"


def _is_ours(folder: Path) -> bool:
    for name in OUTPUT_FILES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("tool") == TOOL:
            return True
    return False


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _finite_or_none(float(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _clean(value: Any) -> Any:
    """Replace NaN/Inf floats by ``None`` so the manifest stays strict JSON."""
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


_NON_FINITE = re.compile(r"-?Infinity|NaN")
# orjson writes each float with the same shortest digits as Python's repr, spelt differently in
# two cases: 1e-5 <= |x| < 1e-4 in positions ("0.0000123", Python: "1.23e-05") and one-digit
# exponents ("1.5e-7", Python: "1.5e-07"; both write 1e16 and over as "1e+16").
_POSITIONAL_E_MINUS_5 = re.compile(r"0\.0000([1-9])(\d*)")  # a literal first: a fast scan
_ONE_DIGIT_EXPONENT = re.compile(r"e-(\d)(?=[,\]])")


def _as_python_writes(match: re.Match[str]) -> str:
    at = match.start()
    if at and match.string[at - 1] in "0123456789.":  # inside a number, such as 10.00001
        return match.group(0)
    first, rest = match.groups()
    return f"{first}.{rest}e-05" if rest else f"{first}e-05"


def _float_text(values: list[Any] | tuple[Any, ...]) -> str | None:
    """Compact JSON of ``values`` as ``json.dumps`` writes it (NaN/Inf as ``null``), by orjson;
    None when orjson is missing or refuses a value (an integer over 64 bits)."""
    if orjson is None:
        return None
    try:
        text = orjson.dumps(values, default=_json_default).decode("ascii")
    except (TypeError, orjson.JSONEncodeError):
        return None
    if "0.0000" in text:
        text = _POSITIONAL_E_MINUS_5.sub(_as_python_writes, text)
    return _ONE_DIGIT_EXPONENT.sub(r"e-0\1", text) if "e-" in text else text


_PLAIN = {int, float, type(None)}  # checked first: a set of types is built at C speed


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    )


# Within :func:`shared_number_text`: id(list) -> (the list, its compact JSON text).
_NUMBER_TEXT: contextvars.ContextVar[dict[int, tuple[Any, str]] | None] = contextvars.ContextVar(
    "featuremaps_number_text", default=None
)


@contextlib.contextmanager
def shared_number_text() -> Iterator[None]:
    """Within this block each list of numbers becomes JSON text once, however many files write
    it: a run's statistics lists are written into its manifest and its report's statistics
    scripts (and measured for the report's budget), and turning a float into its shortest text
    is most of the cost (about 0.75 µs a value; vit_b_16 has a million)."""
    token = _NUMBER_TEXT.set({})
    try:
        yield
    finally:
        _NUMBER_TEXT.reset(token)


def number_list_json(values: list[Any] | tuple[Any, ...]) -> str:
    """Compact JSON text (``","`` between items) of a list of numbers, NaN/Inf as ``null``."""
    memo = _NUMBER_TEXT.get()
    if memo is not None:
        hit = memo.get(id(values))
        if hit is not None and hit[0] is values:
            return hit[1]
    text = _float_text(values)
    if text is None:
        text = json.dumps(values, separators=(",", ":"), default=_json_default)
        if not (set(map(type, values)) == {float} and math.isfinite(sum(values))):
            text = _NON_FINITE.sub("null", text)  # only numbers here: NaN/Infinity are values
    if memo is not None:
        memo[id(values)] = (values, text)  # the list is kept, so its id is not reused
    return text


def dump_json(obj: Any) -> str:
    """Strict, indented JSON text (NaN/Inf become null) with lists of numbers kept on one line.

    Per-channel statistics are long lists of numbers; one line per number would make a large
    model's manifest several times longer and no easier to read. Those lists are encoded apart
    by the C encoder (the indenting encoder is pure Python and took over a second for resnet50)
    and put in place of a token that cannot occur in the data.
    """
    token = f"@@featuremaps-{uuid.uuid4().hex}-"
    lists: list[Any] = []

    def pack(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: pack(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if value and (set(map(type, value)) <= _PLAIN or all(map(_is_number, value))):
                lists.append(value)
                return f"{token}{len(lists) - 1}"
            return [pack(v) for v in value]
        return _clean(value)

    text = json.dumps(pack(obj), indent=2, default=_json_default, allow_nan=False)

    def unpack(match: re.Match[str]) -> str:
        # Numbers hold no comma: every comma of the compact text separates two items.
        return number_list_json(lists[int(match.group(1))]).replace(",", ", ")

    return re.sub(f'"{re.escape(token)}(\\d+)"', unpack, text)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR_END = len(_PNG_SIGNATURE) + 4 + 4 + 13 + 4  # length, type, data, CRC
_JPEG_SOI = b"\xff\xd8"


def marked(data: bytes, mark: str) -> bytes:
    """``data`` with ``mark`` in its metadata when it is a picture; other bytes as they are.

    A PNG gets an uncompressed ``iTXt`` chunk (UTF-8) keyed :data:`MARK_KEY` right after its
    header chunk (Pillow reads it as ``image.text[MARK_KEY]``); a JPEG gets a comment segment
    after its JFIF header (Pillow: ``image.info["comment"]``). The pixels are not touched.
    """
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
        # keyword, NUL, compression flag and method (0: plain), empty language and
        # translated keyword (each NUL-terminated), then the text.
        body = MARK_KEY.encode("latin-1") + b"\0\0\0\0\0" + mark.encode("utf-8")
        crc = zlib.crc32(b"iTXt" + body)
        chunk = struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", crc)
        return data[:_PNG_IHDR_END] + chunk + data[_PNG_IHDR_END:]
    if data.startswith(_JPEG_SOI):
        at = len(_JPEG_SOI)
        if data[at : at + 2] == b"\xff\xe0":  # keep the JFIF segment first
            at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        text = mark.encode("utf-8")[:65533]
        segment = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
        return data[:at] + segment + data[at:]
    return data


def update_run_folder(folder: str | Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``files`` (relative path -> bytes) into an existing featuremaps run folder.

    Used to add or refresh files of a finished run (the HTML report) without staging the whole
    folder again. Each file is replaced in one step (written beside it, then renamed), so a
    reader sees the old or the new file, never half of one. Returns the written paths.
    """
    root = Path(folder)
    if not root.is_dir() or not _is_ours(root):
        raise OutputError(
            f"'{root}' is not a featuremaps run folder (no {MANIFEST} written by featuremaps); "
            "expected the --out folder of a run, or one of its per-image sub-folders"
        )
    written = []
    for relative, data in files.items():
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise OutputError(f"refusing to write '{relative}': it would leave the output folder")
        full = root / rel
        try:
            full.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{full.name}.", dir=full.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, full)
        except OSError as exc:
            raise OutputError(f"cannot write '{full}': {exc}") from None
        written.append(full)
    return written


class SafetensorsStream:
    """Write tensors one by one into a ``.safetensors`` file without holding them all.

    The safetensors library only saves a complete dict at once, which would force an all-layers
    run to keep every activation in memory. The format is simple and documented (an 8-byte
    little-endian header length, a JSON header with dtype, shape and byte offsets, then the raw
    little-endian data), so tensors are spooled to a scratch file as they arrive and the header is
    written in front at the end. Files are read back with the safetensors library in the tests.
    """

    def __init__(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        self._path = path
        # Closed in close(); a context manager cannot span the add() calls.
        self._spool: BinaryIO = tempfile.TemporaryFile(dir=path.parent)  # noqa: SIM115
        self._header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (converted to float32, C order) under key ``name``."""
        if name in self._header:
            raise OutputError(f"array '{name}' written twice into {self._path.name}")
        data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        raw = data.astype("<f4", copy=False).tobytes()
        self._header[name] = {
            "dtype": "F32",
            "shape": list(data.shape),
            "data_offsets": [self._offset, self._offset + len(raw)],
        }
        self._spool.write(raw)
        self._offset += len(raw)

    def close(self) -> None:
        """Write the header and the spooled data to the target file."""
        header = json.dumps(self._header, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data section starts 8-byte aligned
        with open(self._path, "wb") as out:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, out, length=1 << 22)
        self._spool.close()


def parquet_available() -> bool:
    """Whether Parquet files can be written and read (pyarrow, the ``parquet`` extra)."""
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def _kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _arrow_type(pa: Any, relative: str, name: str, values: list[Any]) -> Any:
    """The Arrow type of one column, from the Python types of its values (None: a null)."""
    kinds = {_kind(v) for v in values if v is not None}
    if not kinds:
        return pa.null()
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"}:
        return pa.float64()
    if kinds == {"str"}:
        return pa.string()
    raise OutputError(
        f"cannot write '{relative}': column '{name}' holds {', '.join(sorted(kinds))}; "
        "expected bool, int, float or str"
    )


def folder_size(folder: str | Path) -> int:
    """The bytes of every file under ``folder`` (links not followed)."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class OutputFolder:
    """Collect a run's files and put them in place atomically.

    Use as a context manager: files are written into a hidden staging folder next to ``target``;
    leaving the block normally replaces ``target`` with it, an exception discards it. With
    ``mark`` (the model's random-weights mark), every picture and array written through it
    carries the mark in its metadata (see :func:`marked`).
    """

    def __init__(self, target: str | Path, mark: str | None = None) -> None:
        self.mark = mark
        # An absolute path without resolving links: a link is refused below, and "." gets a
        # real name so that it can be recognised.
        self.target = Path(os.path.abspath(target))
        if self.target.is_symlink():
            raise OutputError(
                f"output path '{target}' is a symbolic link; give the folder it points to, or a "
                "new folder"
            )
        here = Path.cwd().resolve()
        if self.target.resolve() == here or self.target.resolve() in here.parents:
            raise OutputError(
                f"output path '{target}' is the current folder or one above it, which a run "
                "would replace as a whole; choose a new sub-folder, e.g. --out maps"
            )
        if self.target.exists() and not self.target.is_dir():
            raise OutputError(
                f"output path '{self.target}' is a file; expected a folder (new, empty or from an "
                "earlier featuremaps run); choose another --out"
            )
        if self.target.is_dir() and any(self.target.iterdir()) and not _is_ours(self.target):
            raise OutputError(
                f"refusing to replace '{self.target}': it is not empty and holds no featuremaps "
                f"{MANIFEST}, so it may hold your own files; choose a new or empty folder"
            )
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=parent))
            # mkdtemp makes a private (0700) folder; the results should be as readable as any
            # folder the user makes.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.staging, 0o777 & ~umask)
        except OSError as exc:
            raise OutputError(f"cannot create output folder '{self.target}': {exc}") from None
        self._closed = False

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def path(self, relative: str) -> Path:
        """The staging path of ``relative``, refused if it would leave the output folder."""
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise OutputError(f"refusing to write '{relative}': it would leave the output folder")
        full = self.staging / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Write ``data`` to ``relative`` inside the folder; return the relative path."""
        if self.mark:
            data = marked(data, self.mark)
        try:
            self.path(relative).write_bytes(data)
        except OSError as exc:
            raise OutputError(f"cannot write '{relative}' into '{self.target}': {exc}") from None
        return relative

    def read_bytes(self, relative: str) -> bytes:
        """The bytes written to ``relative`` in this run so far."""
        try:
            return self.path(relative).read_bytes()
        except OSError as exc:
            raise OutputError(f"cannot read back '{relative}' in '{self.target}': {exc}") from None

    def remove(self, relative: str) -> None:
        """Remove ``relative``, written in this run (nothing when it is not there)."""
        try:
            self.path(relative).unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot remove '{relative}' from '{self.target}': {exc}") from None

    def write_json(self, relative: str, obj: Any) -> str:
        """Write strict JSON (NaN/Inf become null) to ``relative``; return the relative path."""
        self.write_bytes(relative, (dump_json(obj) + "\n").encode("utf-8"))
        return relative

    def write_csv(self, relative: str, rows: list[dict[str, Any]]) -> str:
        """Write ``rows`` (dicts with the same keys) as CSV with a header; return the path."""
        import csv

        with self.path(relative).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)
        return relative

    def write_parquet(self, relative: str, rows: list[dict[str, Any]]) -> str:
        """Write ``rows`` (dicts with the same keys) as a Parquet table; return the path.

        Column types follow the values, as in the CSV: ``bool``, ``int`` (int64), ``float``
        (float64; NaN stays NaN, a column mixing ints and floats is float64) and ``str``;
        ``None`` is a null.
        """
        if not parquet_available():
            raise OutputError(
                f"cannot write '{relative}': Parquet needs pyarrow; pip install "
                "'featuremaps[parquet]'"
            )
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = list(rows[0]) if rows else []
        for row in rows:
            if list(row) != names:
                raise OutputError(
                    f"cannot write '{relative}': a row has the columns {list(row)}; expected "
                    f"{names} as in the first row"
                )
        columns = {}
        for name in names:
            values = [row[name] for row in rows]
            columns[name] = pa.array(values, type=_arrow_type(pa, relative, name, values))
        try:
            pq.write_table(pa.table(columns), self.path(relative))
        except OSError as exc:
            raise OutputError(f"cannot write '{relative}' into '{self.target}': {exc}") from None
        return relative

    def arrays(self, relative: str, metadata: dict[str, str] | None = None) -> SafetensorsStream:
        """A streaming ``.safetensors`` writer for ``relative`` (close it before committing)."""
        if self.mark:
            metadata = {**(metadata or {}), MARK_KEY: self.mark}
        return SafetensorsStream(self.path(relative), metadata)

    def commit(self) -> Path:
        """Move the staged run into place, replacing an earlier run in one step."""
        if self._closed:
            return self.target
        old: Path | None = None
        try:
            if self.target.exists():
                old = Path(
                    tempfile.mkdtemp(prefix=f".{self.target.name}.old.", dir=self.staging.parent)
                )
                os.replace(self.target, old / "run")
            os.replace(self.staging, self.target)
        except OSError as exc:
            # Put the previous run back where it was and drop the new one.
            if old is not None and (old / "run").exists() and not self.target.exists():
                os.replace(old / "run", self.target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self.discard()
            raise OutputError(f"cannot put the results in '{self.target}': {exc}") from None
        self._closed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        """Drop everything staged; the target is left as it was."""
        if not self._closed:
            self._closed = True
            shutil.rmtree(self.staging, ignore_errors=True)


class DiskArray:
    """A fixed-shape array in a raw file, read and written by blocks, never held whole.

    The layout is C order over ``shape`` (for maps ``(rows, columns, channels)``, so one row of
    a block is one contiguous run of bytes). Blocks go through ``os.pread``/``os.pwrite``, not a
    memory map: pages of a mapped file count towards the process's resident memory until the
    kernel evicts them, which would make a whole-slide run look (and, under pressure, behave)
    as if it held the full canvas. The file starts sparse: parts never written read back as
    zeros (the caller knows which parts it wrote).
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, create: bool = True) -> None:
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._cell = self._row // max(self.shape[1], 1)
        size = self.shape[0] * self._row
        self._fd: int | None = None
        try:
            if create or not path.exists():
                with open(path, "wb") as handle:
                    handle.truncate(size)  # sparse: costs no disk until written
            self._fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise OutputError(f"cannot create the scratch array '{path}': {exc}") from None
        if os.fstat(self._fd).st_size != size:
            self.close()
            raise OutputError(
                f"the scratch array '{path}' has the wrong size for shape {self.shape}; delete "
                "it (or its folder) and run again"
            )

    def _handle(self) -> int:
        if self._fd is None:
            raise OutputError(f"the scratch array '{self.path}' is closed")
        return self._fd

    def write(self, start: tuple[int, int], block: np.ndarray) -> None:
        """Write ``block`` (shape ``(h, w, *shape[2:])``) with its first element at ``start``."""
        y, x = start
        data = np.ascontiguousarray(block, dtype=self.dtype)
        h, w = data.shape[:2]
        if (
            data.shape[2:] != self.shape[2:]
            or min(y, x) < 0
            or y + h > self.shape[0]
            or x + w > self.shape[1]
        ):
            raise OutputError(
                f"block of shape {data.shape} at {start} does not fit the array of shape "
                f"{self.shape}"
            )
        fd = self._handle()
        rows = data.reshape(h, -1)
        for i in range(h):
            os.pwrite(fd, rows[i].tobytes(), (y + i) * self._row + x * self._cell)

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The block ``[rows[0]:rows[1], cols[0]:cols[1]]`` (a new array)."""
        (y0, y1), (x0, x1) = rows, cols
        fd = self._handle()
        out = np.empty((y1 - y0, x1 - x0, *self.shape[2:]), dtype=self.dtype)
        flat = out.reshape(y1 - y0, -1)
        length = (x1 - x0) * self._cell
        for i in range(y1 - y0):
            raw = os.pread(fd, length, (y0 + i) * self._row + x0 * self._cell)
            flat[i] = np.frombuffer(raw, dtype=self.dtype)
        return out

    def flush(self) -> None:
        """Make what was written durable (before the progress that counts on it is saved)."""
        os.fsync(self._handle())

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class WorkFolder:
    """A scratch folder that survives an interrupted run, so the next run can resume.

    It sits beside the output folder (``.NAME.work``) and is keyed by a fingerprint of what the
    run computes: a run with another fingerprint starts it afresh. :meth:`save_state` replaces
    the progress file in one step (write, fsync, rename), so an interrupt leaves either the old
    or the new state. :meth:`remove` deletes it once the results are in place.
    """

    STATE = "state.npz"
    KEY = "fingerprint.json"

    def __init__(self, target: str | Path, fingerprint: dict[str, Any]) -> None:
        target = Path(os.path.abspath(target))
        self.root = target.parent / f".{target.name}.work"
        text = dump_json(fingerprint)
        try:
            previous = (self.root / self.KEY).read_text(encoding="utf-8")
        except OSError:
            previous = None
        self.resumed = previous == text and (self.root / self.STATE).exists()
        try:
            if not self.resumed:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root.mkdir(parents=True)
                (self.root / self.KEY).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot create the work folder '{self.root}': {exc}") from None

    def disk_array(self, name: str, shape: tuple[int, ...], dtype: Any) -> DiskArray:
        """A :class:`DiskArray` in this folder; kept as it was when the run resumes."""
        return DiskArray(self.root / name, shape, dtype, create=not self.resumed)

    def path(self, name: str) -> Path:
        """A scratch path in this folder (for files written by a library, e.g. a thumbnail)."""
        if Path(name).name != name or name in (self.KEY, self.STATE):
            raise OutputError(f"refusing the scratch name '{name}'")
        return self.root / name

    def load_state(self) -> dict[str, np.ndarray] | None:
        """The last saved state, or None for a fresh run."""
        if not self.resumed:
            return None
        with np.load(self.root / self.STATE) as data:
            return {k: data[k] for k in data.files}

    def save_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the saved state with ``arrays`` in one step."""
        tmp = self.root / f".{self.STATE}.tmp"
        try:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]  # names are ours, not flags
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.root / self.STATE)
        except OSError as exc:
            raise OutputError(f"cannot save progress in '{self.root}': {exc}") from None

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)
