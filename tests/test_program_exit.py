"""The ``featuremaps`` program ends without the interpreter's teardown, and loses nothing by it.

Each test starts the program in a fresh process (the console entry point, ``console_main``) and
checks what the teardown would have guaranteed: exit handlers ran, buffered output reached a
pipe, every file is whole, a still-running thread was waited for, a closed pipe is quiet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

import featuremaps

PROGRAM = "from featuremaps.cli import console_main; console_main()"
# Buffered output, as a user's shell gives it: unbuffered streams would hide a missing flush.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def program(args: list[str], prelude: str = "", **kwargs: object) -> subprocess.CompletedProcess:
    code = textwrap.dedent(prelude) + f"\nimport sys; sys.argv = ['featuremaps', *{args!r}]\n"
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", code + PROGRAM],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        **kwargs,
    )


def test_exit_handlers_run_and_piped_output_is_flushed() -> None:
    # stdout is a pipe here, so block-buffered: without a flush the version line would be lost.
    prelude = """
        import atexit
        atexit.register(lambda: print("exit handler ran"))
    """
    done = program(["--version"], prelude)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"featuremaps {featuremaps.__version__}",
        "exit handler ran",
    ]


def test_a_whole_run_leaves_every_file_complete(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    done = program(["run", str(photo), "--model", "shapes_cnn", "--out", str(out), "--quiet"])
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    pictures = [r["image"] for r in manifest["records"] if r.get("image")]
    assert pictures
    for name in pictures:  # written on the writer's thread: each must decode to the end
        with Image.open(out / name) as picture:
            picture.load()
    assert (out / "index.html").read_text().rstrip().endswith("</html>")
    assert f"report: {out / 'index.html'}" in done.stdout


def test_a_running_thread_keeps_the_ordinary_exit(tmp_path: Path) -> None:
    marker = tmp_path / "written-late"
    prelude = f"""
        import threading, time
        import featuremaps.cli  # imported first: the thread outlives what main() does
        def late():
            time.sleep(1.0)
            open({str(marker)!r}, "w").write("done")
        threading.Thread(target=late).start()
    """
    done = program(["--version"], prelude)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "done"


def test_user_errors_keep_their_exit_status(tmp_path: Path) -> None:
    done = program(["run", str(tmp_path / "missing.jpg"), "--model", "shapes_cnn"])
    assert done.returncode == 2
    assert done.stderr.startswith("featuremaps: error: input")
    assert "Traceback" not in done.stderr


def test_a_reader_that_went_away_ends_the_program_quietly() -> None:
    # resnet50's table is longer than the stream's buffer: the failure comes from inside the
    # command, not only from the last flush.
    args = ["layers", "resnet50", "--weights", "none"]
    code = f"import sys; sys.argv = ['featuremaps', *{args!r}]\n{PROGRAM}"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # nobody reads: every write to the pipe fails
        errors = child.stderr.read()
        status = child.wait(timeout=300)
    assert status == 128 + 13
    assert "Traceback" not in errors
    assert "Exception ignored" not in errors


def test_idle_statistics_threads_do_not_hold_the_exit() -> None:
    import threading

    import torch

    from featuremaps.cli import _running
    from featuremaps.datastats import SWEEP_THREADS, RunningStats

    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the sweep uses as many threads as torch: two, to start them
    try:
        RunningStats(8).update(torch.randn(4, 8, 64, 64))
    finally:
        torch.set_num_threads(previous)
    sweepers = [t for t in threading.enumerate() if t.name.startswith(SWEEP_THREADS)]
    assert sweepers and not any(_running(t) for t in sweepers)
    release = threading.Event()
    busy = threading.Thread(target=release.wait)
    busy.start()
    try:
        assert _running(busy)
    finally:
        release.set()
        busy.join()
