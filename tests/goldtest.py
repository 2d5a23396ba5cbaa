"""Golden-image checks: rendered pixels must equal a reviewed PNG in tests/gold/, exactly.

A missing golden fails; it is never created by the test run. On a mismatch or a missing golden
the actual picture is written to tests/actual/ (git-ignored) so a person can look at it and, if
it is right, accept it by copying it into tests/gold/ (see tests/gold/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parent
GOLD = TESTS / "gold"
ACTUAL = TESTS / "actual"


def _save_actual(name: str, pixels: np.ndarray) -> Path:
    ACTUAL.mkdir(exist_ok=True)
    path = ACTUAL / f"{name}.png"
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")
    return path


def _accept_hint(actual: Path, gold: Path) -> str:
    rel_actual = actual.relative_to(TESTS.parent)
    rel_gold = gold.relative_to(TESTS.parent)
    return f"Look at {rel_actual}; if it is right, accept it: cp {rel_actual} {rel_gold}"


def assert_matches_golden(name: str, pixels: np.ndarray) -> None:
    """Fail unless ``pixels`` (H, W, 3) uint8 equals tests/gold/<name>.png exactly."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        pytest.fail(
            f"golden {name!r}: expected (H, W, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}"
        )
    gold = GOLD / f"{name}.png"
    if not gold.exists():
        actual = _save_actual(name, pixels)
        pytest.fail(f"golden {name!r} is missing. {_accept_hint(actual, gold)}")
    with Image.open(gold) as im:
        expected = np.asarray(im.convert("RGB"))
    if expected.shape != pixels.shape:
        actual = _save_actual(name, pixels)
        pytest.fail(
            f"golden {name!r}: size {pixels.shape[:2]} differs from the golden's "
            f"{expected.shape[:2]}. {_accept_hint(actual, gold)}"
        )
    diff = np.any(expected != pixels, axis=2)
    if diff.any():
        actual = _save_actual(name, pixels)
        ys, xs = np.nonzero(diff)
        worst = int(np.abs(expected.astype(np.int16) - pixels.astype(np.int16)).max())
        pytest.fail(
            f"golden {name!r}: {int(diff.sum())} pixels differ (first at x={xs[0]}, y={ys[0]}; "
            f"largest channel difference {worst}). {_accept_hint(actual, gold)}"
        )
