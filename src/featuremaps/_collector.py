"""The cyclic garbage collector around imports and model loading: paused, then given the new
objects in one step.

Importing torch and torchvision and building a model create a few hundred thousand objects that
live as long as the process. The collector would walk them all several times while they are
made, and again at each later collection of their generation, without finding anything to free
(about 0.4 s of a 2.5 s ``import featuremaps`` on two cores). :func:`paused` stops it for such a
block and then hands what the block made to the oldest generation without walking it
(:func:`gc.freeze` then :func:`gc.unfreeze`), or keeps it frozen where the process already keeps
its long-lived objects frozen (the ``featuremaps`` program does, see
:func:`featuremaps.cli.console_main`). The collector is left on or off as it was found.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["paused"]

# Blocks may overlap (nested, or two threads loading models): the first to enter pauses the
# collector and the last to leave restores it, so a block that ends does not switch it back on
# under one still running, and the objects are handed over once.
_lock = threading.Lock()
_inside = 0
_was_enabled = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block; its objects then join the oldest generation (the
    frozen ones, if the process freezes its long-lived objects)."""
    global _inside, _was_enabled
    with _lock:
        if _inside == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                frozen = gc.get_freeze_count() > 0
                gc.freeze()
                if not frozen:
                    gc.unfreeze()
                if _was_enabled:
                    gc.enable()
