"""The pure comparison: per-channel change against numpy, and the streaming minibatch CKA
against the closed-form unbiased CKA written out with full matrices (Song et al. 2012)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featuremaps._errors import InputError
from featuremaps.compare import CKASums, compare_arrays, gram, unbiased_cka


def _oracle_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Unbiased HSIC written as in the paper, with explicit matrix products."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    return float(
        (
            np.trace(kt @ lt)
            + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ kt @ lt @ one)
        )
        / (n * (n - 3))
    )


def _oracle_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return _oracle_hsic(k, l) / np.sqrt(_oracle_hsic(k, k) * _oracle_hsic(l, l))


def _data(seed: int = 0, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 4, 5))
    y = np.tanh(x.reshape(n, -1) @ rng.normal(size=(60, 7))) + 0.3 * rng.normal(size=(n, 7))
    return x, y


def test_closed_form_equals_oracle() -> None:
    x, y = _data()
    assert unbiased_cka(x, y) == pytest.approx(_oracle_cka(x, y), abs=1e-12)


def test_one_minibatch_equals_full_unbiased_cka() -> None:
    x, y = _data()
    sums = CKASums(["a"], ["b"])
    sums.update([gram(x)], [gram(y)])
    assert sums.matrix()[0, 0] == pytest.approx(_oracle_cka(x, y), abs=1e-6)


def test_streaming_is_the_minibatch_estimator_and_merges_exactly() -> None:
    x, y = _data(n=30)
    cuts = [(0, 8), (8, 16), (16, 24), (24, 30)]
    one = CKASums(["a"], ["b"])
    for lo, hi in cuts:
        one.update([gram(x[lo:hi])], [gram(y[lo:hi])])
    # Nguyen et al.: the mean of per-minibatch HSICs in the numerator and denominators.
    xy = np.mean([_oracle_hsic(gram(x[lo:hi]), gram(y[lo:hi])) for lo, hi in cuts])
    xx = np.mean([_oracle_hsic(gram(x[lo:hi]), gram(x[lo:hi])) for lo, hi in cuts])
    yy = np.mean([_oracle_hsic(gram(y[lo:hi]), gram(y[lo:hi])) for lo, hi in cuts])
    assert one.matrix()[0, 0] == pytest.approx(xy / np.sqrt(xx * yy), abs=1e-6)
    first, second = CKASums(["a"], ["b"]), CKASums(["a"], ["b"])
    for lo, hi in cuts[:2]:
        first.update([gram(x[lo:hi])], [gram(y[lo:hi])])
    for lo, hi in cuts[2:]:
        second.update([gram(x[lo:hi])], [gram(y[lo:hi])])
    first.merge(second)
    np.testing.assert_array_equal(first.matrix(), one.matrix())
    assert (first.batches, first.samples, first.left_out) == (4, 30, 0)


def test_small_minibatch_is_left_out_and_counted() -> None:
    x, y = _data(n=11)
    sums = CKASums(["a"], ["b"])
    sums.update([gram(x[:8])], [gram(y[:8])])
    sums.update([gram(x[8:])], [gram(y[8:])])
    assert (sums.batches, sums.samples, sums.left_out) == (1, 8, 3)


def test_layer_by_layer_matrix_of_a_model_with_itself_has_ones_on_the_diagonal() -> None:
    x, y = _data()
    sums = CKASums(["x", "y"], ["x", "y"])
    sums.update([gram(x), gram(y)], [gram(x), gram(y)])
    matrix = sums.matrix()
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-12)
    assert matrix[0, 1] == pytest.approx(_oracle_cka(x, y), abs=1e-9)
    assert sums.paired() == pytest.approx({"x": 1.0, "y": 1.0})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1e3))
def test_cka_is_invariant_to_rotation_and_isotropic_scaling(seed: int, scale: float) -> None:
    x, y = _data(seed, n=12)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    base = unbiased_cka(x, y)
    assert unbiased_cka(x, y @ q) == pytest.approx(base, abs=1e-9)
    assert unbiased_cka(x * scale, y) == pytest.approx(base, abs=1e-9)
    assert unbiased_cka(y, y) == pytest.approx(1.0, abs=1e-12)


def test_change_against_numpy() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    b = a.copy()
    b[:, 3] += rng.normal(size=(2, 3, 4)).astype(np.float32) * 3
    b[:, 1] *= 2
    change = compare_arrays(a, b, "conv")
    x, y = a.astype(np.float64), b.astype(np.float64)
    assert change.cosine == pytest.approx(np.sum(x * y) / np.linalg.norm(x) / np.linalg.norm(y))
    assert change.relative_l2 == pytest.approx(np.linalg.norm(y - x) / np.linalg.norm(x))
    for c in range(5):
        xc, yc = x[:, c].ravel(), y[:, c].ravel()
        got = change.channels[c]
        assert got.cosine == pytest.approx(xc @ yc / np.linalg.norm(xc) / np.linalg.norm(yc))
        assert got.relative_l2 == pytest.approx(np.linalg.norm(yc - xc) / np.linalg.norm(xc))
    order = np.argsort(-np.linalg.norm((y - x).transpose(1, 0, 2, 3).reshape(5, -1), axis=1))
    assert [change.channels[c].rank for c in order] == [1, 2, 3, 4, 5]
    assert change.largest(2) == [3, 1]
    assert change.channels[0].rank == 3  # unchanged channels rank by channel on ties


def test_same_arrays_give_cosine_one_and_no_change_zeros_included() -> None:
    a = np.zeros((1, 2, 3, 3), dtype=np.float32)
    a[0, 0, 1, 1] = 2.0
    change = compare_arrays(a, a.copy())
    assert change.cosine == 1.0 and change.relative_l2 == 0.0
    assert [(c.cosine, c.relative_l2) for c in change.channels] == [(1.0, 0.0), (1.0, 0.0)]


def test_shape_mismatch_is_one_clear_error() -> None:
    with pytest.raises(InputError, match=r"layer 'fc' has shape \(1, 3\) for A and \(1, 4\) for B"):
        compare_arrays(np.zeros((1, 3)), np.zeros((1, 4)), "fc")
