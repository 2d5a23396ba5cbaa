"""The cyclic collector around imports and model loading (featuremaps._collector)."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

import pytest

from featuremaps import _collector


class Node:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector_state():  # type: ignore[no-untyped-def]
    was = gc.isenabled()
    yield
    gc.unfreeze()
    gc.enable() if was else gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_paused_stops_collections_inside_and_leaves_the_collector_as_found(
    collector_state: None, enabled: bool
) -> None:
    gc.enable() if enabled else gc.disable()
    with _collector.paused():
        assert not gc.isenabled()
        made = Node()
        assert gc.is_tracked(made)
    assert gc.isenabled() is enabled
    assert gc.get_freeze_count() == 0  # handed to the oldest generation, not frozen
    with pytest.raises(ValueError), _collector.paused():
        raise ValueError("inside")
    assert gc.isenabled() is enabled


def test_objects_made_while_paused_are_still_collected_as_garbage(collector_state: None) -> None:
    gc.enable()
    with _collector.paused():
        Node()  # a cycle that is garbage at once
    assert gc.collect() >= 1


def test_a_process_that_freezes_its_objects_keeps_the_new_ones_frozen(
    collector_state: None,
) -> None:
    gc.freeze()
    before = gc.get_freeze_count()
    with _collector.paused():
        kept = [Node() for _ in range(10)]
    assert gc.get_freeze_count() >= before + len(kept)


def test_importing_featuremaps_leaves_the_collector_on_and_nothing_frozen() -> None:
    code = "import gc, featuremaps; print(gc.isenabled(), gc.get_freeze_count())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "0"]


def test_overlapping_blocks_pause_until_the_last_one_ends(collector_state: None) -> None:
    # Two threads loading models at once: the second finds the collector paused by the first,
    # which ends first; the collector stays paused until the second ends, then is on again.
    gc.enable()
    first_in, second_in, first_out = (threading.Event() for _ in range(3))
    seen: list[bool] = []

    def first() -> None:
        with _collector.paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with _collector.paused():
            second_in.set()
            first_out.wait(10)
            seen.append(gc.isenabled())  # still inside a block

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [False]
    assert gc.isenabled()
    with _collector.paused(), _collector.paused():  # nested
        assert not gc.isenabled()
    assert gc.isenabled()
