"""IO: the only module that writes files.

Last stage of the flow (… → render → **io**). An :class:`OutputFolder` collects every file of a run
in a hidden staging folder beside the target and moves it into place in one step on
:meth:`OutputFolder.commit`, so a reader never sees a mix of an old and a new run, and a failed run
leaves the previous results untouched. File names derived from layer names are made safe here
(no separators, no ``..``, unique), and every path is checked to stay inside the output folder.

A folder is only ever replaced when it is empty or holds a ``manifest.json`` written by this tool;
anything else may be the user's own files and is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import torch

from featuremaps._errors import OutputError
from featuremaps.manifest import MANIFEST, OUTPUT_FILES, TOOL

__all__ = [
    "OutputFolder",
    "SafetensorsStream",
    "dump_json",
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


_PLAIN = {int, float, type(None)}  # checked first: a set of types is built at C speed


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    )


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
        numbers = json.dumps(
            lists[int(match.group(1))], separators=(", ", ":"), default=_json_default
        )
        return _NON_FINITE.sub("null", numbers)  # only numbers here: NaN/Infinity are values

    return re.sub(f'"{re.escape(token)}(\\d+)"', unpack, text)


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


class OutputFolder:
    """Collect a run's files and put them in place atomically.

    Use as a context manager: files are written into a hidden staging folder next to ``target``;
    leaving the block normally replaces ``target`` with it, an exception discards it.
    """

    def __init__(self, target: str | Path) -> None:
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
        try:
            self.path(relative).write_bytes(data)
        except OSError as exc:
            raise OutputError(f"cannot write '{relative}' into '{self.target}': {exc}") from None
        return relative

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
