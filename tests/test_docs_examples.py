"""Every example in README.md and docs/ runs, offline, so the guide cannot drift from the program.

The fenced blocks are read from the Markdown, one test per block, named ``file:line``:

- ``sh``: each line is a ``featuremaps ...`` command (comments and ``\\`` continuations as in a
  shell), run through :func:`featuremaps.cli.main`; it must exit with 0;
- ``console``: ``$ featuremaps ...`` lines followed by output; every output line shown must be a
  line the command printed (``...`` stands for lines left out), and the command exits with 0, or
  with 2 when the output shown is a ``featuremaps: error:`` line;
- ``python``: executed in a fresh namespace; the only warnings allowed are featuremaps' own (the
  random-weights warning of an offline run is what a user sees too).

Each block runs in its own folder holding the files the examples name: ``photo.jpg`` (the bundled
sample photo), ``stripes.png``, ``data/`` and ``more/`` (small procedural images), ``slide.tif``
(a small synthetic slide) and every block marked ``<!-- file: NAME -->``, written as ``NAME``.
A block that cannot run here says why on the line above it: ``<!-- not run: REASON -->``.
Output shown as ``text`` (or ``json``) is never run.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featuremaps as fm
from featuremaps.cli import main
from slide_data import tissue_picture, write_page_pyramid

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_LANGUAGES = ("sh", "console", "python")
SHOWN_LANGUAGES = ("text", "json")
# Few blocks may opt out, each with its reason; more means the guide drifts out of the test's reach.
MAX_NOT_RUN = 10  # 8, and the two cluster examples of docs/concepts/engines.md
FENCE = re.compile(r"^```([\w-]*)\s*$")
MARKER = re.compile(r"^<!-- (not run|file): (.*?) -->$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None  # "not run" or "file"
    argument: str | None  # the reason, or the file name

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.marker != "not run"


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path.name}:{i + 1}: fence never closed")
        before = [line for line in lines[:i] if line.strip()]
        marked = MARKER.match(before[-1].strip()) if before else None
        blocks.append(
            Block(
                path=path.relative_to(ROOT).as_posix(),
                line=i + 1,
                language=opening.group(1),
                code="\n".join(lines[i + 1 : end]) + "\n",
                marker=marked.group(1) if marked else None,
                argument=marked.group(2).strip() if marked else None,
            )
        )
        i = end + 1
    return blocks


BLOCKS = [block for path in DOCS for block in read_blocks(path)]
RUNNABLE = [block for block in BLOCKS if block.runs]


# -- the folder the examples run in ------------------------------------------------------------


def _procedural(kind: str, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {
        "horizontal": (yy // 6) % 2 == 0,
        "vertical": (xx // 6) % 2 == 0,
        "diagonal": ((xx + yy) // 8) % 2 == 0,
        "disk": (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2,
        "rectangle": (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 3),
        "checkerboard": ((yy // 8) + (xx // 8)) % 2 == 0,
    }
    grey = np.where(patterns[kind], 230, 25).astype(np.uint8)
    return np.stack([grey] * 3, axis=-1)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("workspace")
    shutil.copy(fm.sample_image_path(), folder / "photo.jpg")
    Image.fromarray(_procedural("horizontal", 96)).save(folder / "stripes.png")
    for name, kinds in (
        ("data", ("horizontal", "vertical", "disk", "checkerboard")),
        ("more", ("diagonal", "rectangle", "vertical", "disk")),
    ):
        (folder / name).mkdir()
        for kind in kinds:
            Image.fromarray(_procedural(kind)).save(folder / name / f"{kind}.png")
    write_page_pyramid(folder / "slide.tif", tissue_picture(300, 352), mpp=0.5)
    for block in BLOCKS:
        if block.marker == "file" and block.argument:
            (folder / block.argument).write_text(block.code, encoding="utf-8")
    return folder


@pytest.fixture
def example_dir(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "example"
    shutil.copytree(workspace, folder)
    monkeypatch.chdir(folder)
    yield folder


# -- running one block -------------------------------------------------------------------------


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuations joined, comments and blank lines dropped."""
    commands: list[str] = []
    pending = ""
    for raw in code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()  # a comment starts a word, as in sh
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            commands.append(line)
    return commands


def run_command(command: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    words = shlex.split(command)
    if not words or words[0] != "featuremaps":
        pytest.fail(
            f"cannot run {command!r}: examples run `featuremaps ...` commands; mark the block "
            "'<!-- not run: REASON -->' if it must stay untested"
        )
    capsys.readouterr()
    out = io.StringIO()
    try:
        code = main(words[1:], out=out)
    except SystemExit as exit:  # argparse's own errors and --help, as in a shell
        code = exit.code if isinstance(exit.code, int) else 1
    err = capsys.readouterr().err
    return code, out.getvalue(), err


def run_shell(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    commands = shell_commands(block.code)
    assert commands, f"{block.id}: no command in the block"
    for command in commands:
        code, out, err = run_command(command, capsys)
        assert code == 0, f"{block.id}: `{command}` exited with {code}\n{out}{err}"


def run_console(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line.rstrip())
        elif line.strip():
            pytest.fail(f"{block.id}: output before the first `$ ` command: {line!r}")
    assert steps, f"{block.id}: no `$ ` command in the block"
    for command, shown in steps:
        code, out, err = run_command(command, capsys)
        expected_code = 2 if any(s.startswith("featuremaps: error:") for s in shown) else 0
        printed = {line.rstrip() for line in (out + err).splitlines()}
        missing = [s for s in shown if s.strip() not in ("", "...") and s not in printed]
        assert code == expected_code and not missing, (
            f"{block.id}: `{command}` exited with {code} (expected {expected_code}); "
            f"lines shown but not printed: {missing}\n--- printed ---\n{out}{err}"
        )


def run_python(block: Block) -> None:
    program = compile(block.code, block.id, "exec")
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        exec(program, {"__name__": "__main__"})
    foreign = [w for w in caught if not issubclass(w.category, fm.FeaturemapsWarning)]
    assert not foreign, f"{block.id}: warnings other than featuremaps' own: " + "; ".join(
        f"{w.category.__name__}: {w.message}" for w in foreign
    )


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_example_runs(block: Block, example_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if block.language == "sh":
        run_shell(block, capsys)
    elif block.language == "console":
        run_console(block, capsys)
    else:
        run_python(block)


# -- the rules of the Markdown -----------------------------------------------------------------


def test_every_fence_names_a_language_the_test_knows() -> None:
    unknown = [
        f"{block.id} ({block.language or 'no language'})"
        for block in BLOCKS
        if block.language not in RUN_LANGUAGES + SHOWN_LANGUAGES
    ]
    assert not unknown, f"fences must be one of {RUN_LANGUAGES + SHOWN_LANGUAGES}: {unknown}"


def test_blocks_kept_from_running_are_few_and_say_why() -> None:
    not_run = [block for block in BLOCKS if block.marker == "not run"]
    assert len(not_run) <= MAX_NOT_RUN, [block.id for block in not_run]
    for block in not_run:
        assert block.language in RUN_LANGUAGES, f"{block.id}: a {block.language} block never runs"
        assert block.argument and len(block.argument) >= 10, f"{block.id}: give the reason"


def test_every_marker_sits_on_a_fence() -> None:
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("<!--") and ("not run" in line or "file:" in line):
                assert MARKER.match(line.strip()), f"{path.name}:{i + 1}: malformed {line!r}"
                following = [later for later in lines[i + 1 :] if later.strip()]
                assert following and FENCE.match(following[0]), (
                    f"{path.name}:{i + 1}: a marker must sit right above a fence"
                )


def test_each_command_page_and_the_readme_have_examples_that_run() -> None:
    pages = {"README.md"} | {
        f"docs/{name}.md"
        for name in ("run", "layers", "stats", "ablate", "locate", "slide", "api", "watch")
    }
    with_examples = {block.path for block in RUNNABLE}
    assert pages <= with_examples, sorted(pages - with_examples)


def test_shell_commands_are_read_as_a_shell_reads_them() -> None:
    code = "featuremaps a --layer relu#2  # a comment\n# a comment\nfeaturemaps b \\\n  --x 1\n"
    commands = [shlex.split(command) for command in shell_commands(code)]
    assert commands == [["featuremaps", "a", "--layer", "relu#2"], ["featuremaps", "b", "--x", "1"]]
