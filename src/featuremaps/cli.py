"""Command line: parse arguments, call the public API, turn errors into one line and an exit code.

    featuremaps COMMAND [options] ...   one of COMMANDS below (featuremaps --help lists them)
    featuremaps IMAGE ... [options]     the default command, ``run``

A command is one module under :mod:`featuremaps.commands` (its options, its call and the public
function it wraps) and one line of COMMANDS; this module only picks the command, joins option
values that start with "-", shows warnings as one line each and maps errors to exit codes.

Exit codes: 0 success, 2 a user error (one line on stderr, no traceback), 130 interrupted, 141
the reader of the output went away (`featuremaps layers resnet50 | head`).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import NoReturn, TextIO

from featuremaps._errors import FeaturemapsError, FeaturemapsWarning
from featuremaps._version import __version__
from featuremaps.commands import (
    ablate,
    atlas,
    cam,
    compare,
    layers,
    locate,
    prune,
    report_timeline,
    run,
    slide,
    stats,
)
from featuremaps.commands.cli_common import Command

__all__ = ["console_main", "main"]


#: The commands, in the order ``featuremaps --help`` lists them; ``run`` is the default. A
#: command is its module under :mod:`featuremaps.commands`: its options, its call and the public
#: function it wraps.
COMMANDS: dict[str, Command] = {
    "run": run.COMMAND,
    "layers": layers.COMMAND,
    "stats": stats.COMMAND,
    "atlas": atlas.COMMAND,
    "ablate": ablate.COMMAND,
    "prune": prune.COMMAND,
    "locate": locate.COMMAND,
    "cam": cam.COMMAND,
    "compare": compare.COMMAND,
    "slide": slide.COMMAND,
    "report-timeline": report_timeline.COMMAND,
}
DESCRIPTION = (
    "Capture every layer of a PyTorch model on real inputs and draw truthful channel grids with "
    "a manifest of numbers."
)
# Options whose value may start with "-" (a negative number), of every command: "--range -1,1" is
# read as "--range=-1,1", which argparse would otherwise take for an unknown option.
_SIGNED_VALUES = tuple(dict.fromkeys(o for c in COMMANDS.values() for o in c.signed_values))


def _parser(name: str) -> argparse.ArgumentParser:
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(
        prog=f"featuremaps {name}", description=command.help[:1].upper() + command.help[1:] + "."
    )
    command.build(parser)
    return parser


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: featuremaps [COMMAND] [options] [IMAGE ...]",
        "",
        DESCRIPTION,
        "",
        "commands (without one, 'run' is meant: featuremaps photo.jpg --model resnet50):",
    ]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    lines += ["", "featuremaps COMMAND --help shows a command's options; --version its version."]
    return "\n".join(lines)


def _join_signed_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _SIGNED_VALUES and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    The first argument names the command; anything else (an image, an option) means ``run``.
    Options may come before, between or after the images.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(), file=out)
        return 0
    if argv[0] == "--version":
        print(f"featuremaps {__version__}", file=out)
        return 0
    name = argv[0] if argv[0] in COMMANDS else "run"
    rest = argv[1:] if argv[0] in COMMANDS else argv
    args = _parser(name).parse_intermixed_args(_join_signed_values(rest))
    with warnings.catch_warnings():
        warnings.simplefilter("always", FeaturemapsWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
            # Our own warnings are for the user: one plain line. Others keep their usual form.
            if issubclass(category, FeaturemapsWarning):
                print(f"featuremaps: warning: {message}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return COMMANDS[name].call(args, out)
        except FeaturemapsError as exc:
            print(f"featuremaps: error: {exc}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as exc:
            # torch's CPU allocator raises RuntimeError ("can't allocate memory"), CUDA an
            # OutOfMemoryError (a RuntimeError); anything else is a bug and keeps its traceback.
            text = str(exc).lower()
            if not isinstance(exc, MemoryError) and "allocate" not in text and "memory" not in text:
                raise
            print(
                "featuremaps: error: out of memory; select fewer layers (--layers) or use a "
                "smaller input (--size)",
                file=sys.stderr,
            )
            return 2
        except KeyboardInterrupt:
            print("featuremaps: interrupted; nothing was written", file=sys.stderr)
            return 130
        finally:
            warnings.showwarning = previous


_CLOSED_PIPE = 128 + 13  # the status of a program that SIGPIPE ended


def console_main() -> NoReturn:
    """The ``featuremaps`` program: :func:`main`, then an exit without the interpreter's teardown.

    A process that has imported torch spends about a second at exit freeing modules and running
    the native libraries' destructors (``python -c "import torch, torchvision"``: 1.2-1.4 s
    longer than the same import ended by ``os._exit``, on a 2-core machine), time in which no
    file is written or read. When the command has returned, its files are written and closed and
    its thread pools joined, so the process ends here: the exit handlers registered with
    :mod:`atexit` run as usual (coverage, multiprocessing, logging), the standard streams are
    flushed, and :func:`os._exit` skips the rest. A thread other than the main one that is still
    running keeps the ordinary exit, which waits for it; an exception keeps it too.

    A reader that goes away (``featuremaps layers resnet50 | head``) ends the program quietly
    with the status a program killed by SIGPIPE has, 141, as other command-line tools do.

    The objects of the imports (torch's included) live until the end, so they are moved out of
    the cyclic garbage collector's sight (:func:`gc.freeze`), as are those of loading a
    torchvision or timm model (:mod:`featuremaps._collector`): its collections during the
    command then walk only the command's own objects.
    """
    gc.freeze()
    try:
        code = main()
    except BrokenPipeError:
        # Anything still buffered for the closed pipe is dropped, not reported at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = _CLOSED_PIPE
    _exit_without_teardown(code)


def _exit_without_teardown(code: int) -> NoReturn:
    if any(_running(t) for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away before the last lines
            code = code or _CLOSED_PIPE
        except (OSError, ValueError):  # a stream closed or failing: as Python's own exit
            code = code or 120
    os._exit(code)


def _running(thread: threading.Thread) -> bool:
    """Whether ``thread`` may still have work that the ordinary exit would wait for. The
    statistics' sweep threads only ever work inside a call that has returned: they are idle."""
    if thread is threading.main_thread() or thread.daemon or not thread.is_alive():
        return False
    stats = sys.modules.get("featuremaps.datastats")  # not imported: none of its threads exist
    return stats is None or not thread.name.startswith(stats.SWEEP_THREADS)


if __name__ == "__main__":
    console_main()
