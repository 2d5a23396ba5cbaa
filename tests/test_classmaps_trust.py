"""Trust numbers of class maps: deletion/insertion curves against a direct recomputation, the
cell regions against the nearest-centre rule, and the model-randomisation sanity check.

Oracles: a model whose answer is the sum of a known region of the input (its deletion curve must
fall faster than random orders, and every number is recomputed here by masking the pixels, running
the model, taking the softmax and the trapezoid rule by hand); a brute-force nearest-centre search
for the regions; scipy's Spearman correlation; the trained ``shapes_cnn`` for the sanity check
(Grad-CAM depends on the layers above, EigenCAM cannot).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps.classmaps import SANITY_THRESHOLD, class_maps
from featuremaps.classmaps.trust import (
    RANDOM_ORDERS,
    cell_regions,
    random_orders,
    rank_correlation,
    reinitialised,
    value_order,
)
from featuremaps.geometry import AxisGeometry, MapGeometry
from featuremaps.zoo.shapes import CLASSES, make_shapes

SIZE = 9  # input pixels per side
CELLS = 4  # Conv2d(k=3, stride=2, padding=0) on 9 pixels: centres at 1, 3, 5, 7
REGION = ((0, 1), (1, 1), (1, 2), (2, 2))  # the cells whose sum is the class score
CONSTANT = 1.5  # the second class's score


class RegionSum(nn.Module):
    """``features`` copies the centre pixel of each 3x3 window (stride 2); class 0's score is
    the sum of ``features`` over :data:`REGION`, class 1's is :data:`CONSTANT`. So class 0
    depends on exactly the input pixels ``(2i + 1, 2j + 1)`` of the region's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 3, stride=2, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0, 1, 1] = 1.0
        self.act = nn.ReLU()
        mask = torch.zeros(CELLS, CELLS)
        for i, j in REGION:
            mask[i, j] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.features(x))
        region = (a[:, 0] * self.mask).sum((1, 2))
        return torch.stack([region, torch.full_like(region, CONSTANT)], 1)


def _centres(stride: float, offset: float, cells: int) -> np.ndarray:
    return offset + stride * np.arange(cells)


def _nearest(pixels: int, centres: np.ndarray) -> np.ndarray:
    """Brute force: each pixel's nearest centre; halfway between two goes to the later one."""
    distance = np.abs(np.arange(pixels)[:, None] - centres[None, :])
    best = distance.min(1, keepdims=True)
    ties = np.isclose(distance, best, rtol=0, atol=1e-9)
    return np.asarray([np.flatnonzero(row).max() for row in ties])


def _pixel_cells(
    cells: tuple[int, int], size: tuple[int, int], axes: list[np.ndarray]
) -> np.ndarray:
    rows = _nearest(size[0], axes[0])
    cols = _nearest(size[1], axes[1])
    return rows[:, None] * cells[1] + cols[None, :]


def _stretched(pixels: int, cells: int) -> np.ndarray:
    """Cell centres of a map stretched over the input: cell j covers [j, j + 1) · pixels / cells."""
    return (np.arange(cells) + 0.5) * pixels / cells - 0.5


def _probability(model: nn.Module, x: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(x).double(), 1)[0, target])


def _trapezoid(x: list[float], y: list[float]) -> float:
    return sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))


def _recomputed(
    model: nn.Module,
    sample: torch.Tensor,
    pixel_cell: np.ndarray,
    order: list[int],
    steps: int,
    target: int,
) -> tuple[float, float]:
    """Deletion and insertion areas by hand: take the first cells of ``order`` (their pixels
    set to zero, or copied onto zeros), run the model, softmax, trapezoids over the fraction."""
    total = len(order)
    fractions, deletion, insertion = [], [], []
    for s in range(steps + 1):
        taken = order[: round(s * total / steps)]
        hit = torch.from_numpy(np.isin(pixel_cell, taken))
        deleted = torch.where(hit, torch.zeros_like(sample), sample)
        inserted = torch.where(hit, sample, torch.zeros_like(sample))
        fractions.append(len(taken) / total)
        deletion.append(_probability(model, deleted, target))
        insertion.append(_probability(model, inserted, target))
    return _trapezoid(fractions, deletion), _trapezoid(fractions, insertion)


@pytest.fixture
def region_input() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return 0.5 + 0.5 * torch.rand(1, 1, SIZE, SIZE, generator=generator)


# -- deletion and insertion -------------------------------------------------------------------


@pytest.mark.parametrize("steps", [16, 5])
@pytest.mark.parametrize("geometry", [True, False])
def test_deletion_and_insertion_find_the_region_and_equal_a_recomputation(
    region_input: torch.Tensor, steps: int, geometry: bool
) -> None:
    model = RegionSum().eval()
    (found,) = class_maps(
        model,
        region_input,
        layers="features",
        methods="layercam",
        target=0,
        steps=steps,
        sanity=False,
        geometry=geometry,
    )
    # LayerCAM is the region's activations there and zero elsewhere (gradient 1 inside, 0 out).
    expected_map = np.zeros((CELLS, CELLS))
    for i, j in REGION:
        expected_map[i, j] = float(region_input[0, 0, 2 * i + 1, 2 * j + 1])
    np.testing.assert_allclose(found.array, expected_map, rtol=1e-6)

    axes = (
        [_centres(2, 1, CELLS)] * 2 if geometry else [_stretched(SIZE, CELLS)] * 2
    )  # Conv2d(3, stride 2, padding 0): offset (3 - 1) / 2 - 0 = 1
    pixel_cell = _pixel_cells((CELLS, CELLS), (SIZE, SIZE), axes)[None, None]
    by_value = sorted(range(CELLS * CELLS), key=lambda c: -expected_map.reshape(-1)[c])
    deletion, insertion = _recomputed(model, region_input, pixel_cell, by_value, steps, 0)
    assert found.deletion_auc == pytest.approx(deletion, rel=1e-6)
    assert found.insertion_auc == pytest.approx(insertion, rel=1e-6)

    controls = [
        _recomputed(model, region_input, pixel_cell, order.tolist(), steps, 0)
        for order in random_orders(CELLS * CELLS)
    ]
    assert found.random_auc == pytest.approx(np.mean([d for d, _ in controls]), rel=1e-6)
    assert found.random_insertion_auc == pytest.approx(np.mean([i for _, i in controls]), rel=1e-6)
    # The map knows where the answer is: deletion falls faster, insertion rises faster.
    assert found.deletion_auc < found.random_auc - 0.05
    assert found.insertion_auc > found.random_insertion_auc + 0.05
    assert found.curves is not None and found.random_curves is not None
    assert found.curves.deletion[0] == pytest.approx(_probability(model, region_input, 0))


def test_tied_cells_follow_the_controls_first_order_not_the_rows() -> None:
    """A map with no ranking (every cell equal) must score like a random order: read row by row
    it would delete the region in the first rows first and look informative."""
    model = RegionSum().eval()
    flat = torch.ones(1, 1, SIZE, SIZE)  # every cell's activation is 1: Grad-CAM is constant
    (found,) = class_maps(
        model, flat, layers="features", methods="gradcam", target=0, steps=16, sanity=False
    )
    assert np.ptp(found.array) == 0 and found.array.max() > 0
    pixel_cell = _pixel_cells((CELLS, CELLS), (SIZE, SIZE), [_centres(2, 1, CELLS)] * 2)
    first = random_orders(CELLS * CELLS)[0].tolist()
    deletion, insertion = _recomputed(model, flat, pixel_cell[None, None], first, 16, 0)
    assert found.deletion_auc == pytest.approx(deletion, rel=1e-6)
    assert found.insertion_auc == pytest.approx(insertion, rel=1e-6)
    rows, _ = _recomputed(model, flat, pixel_cell[None, None], list(range(16)), 16, 0)
    assert abs(rows - deletion) > 0.05  # the rule matters on this model


def test_value_order_breaks_ties_by_the_given_order() -> None:
    values = np.array([[0.5, 2.0], [0.5, np.nan]])
    assert value_order(values).tolist() == [1, 0, 2, 3]
    assert value_order(values, ties=np.array([3, 2, 1, 0])).tolist() == [1, 2, 0, 3]
    with pytest.raises(ValueError, match="not an order of the map's 4 cells"):
        value_order(values, ties=np.array([0, 0, 1, 2]))


class TwoMaps(nn.Module):
    """Two layers with the same cells and geometry (``features`` and ``act``) and a global
    average pool head, under which gradcam and xgradcam rank cells alike."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 3, stride=2)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)).mean((2, 3)))


def test_curves_are_computed_once_per_cell_order_and_regions(region_input: torch.Tensor) -> None:
    model = TwoMaps().eval()
    with torch.no_grad():  # positive activations: the ReLU changes nothing, both maps agree
        model.features.bias.fill_(5.0)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(int(args[0].shape[0])))
    kwargs = {"layers": ["features", "act"], "methods": "gradcam,xgradcam", "sanity": False}
    without = class_maps(model, region_input, trust=False, **kwargs)  # type: ignore[arg-type]
    passes = sum(seen)
    seen.clear()
    found = class_maps(model, region_input, trust=True, steps=4, **kwargs)  # type: ignore[arg-type]
    assert [m.array.tolist() for m in found] == [m.array.tolist() for m in without]
    assert len({value_order(m.array).tobytes() for m in found}) == 1  # one ranking of cells
    # One set of regions, the control's orders and one map order, each giving 2 (steps + 1)
    # inputs; computed per call and method that would be 2 x (RANDOM_ORDERS + 2) orders.
    assert sum(seen) - passes == (RANDOM_ORDERS + 1) * 2 * (4 + 1)
    assert len({(m.deletion_auc, m.random_auc) for m in found}) == 1


# -- cell regions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "size", "y", "x"),
    [
        ((4, 4), (9, 9), (2.0, 1.0), (2.0, 1.0)),  # Conv2d(3, stride 2)
        ((4, 5), (16, 20), (4.0, -0.5), (4.0, 1.5)),  # a ResNet-like offset, cells off the edge
        ((5, 3), (10, 7), (2.0, 0.0), (3.0, 0.0)),  # pixels halfway between two centres
        ((3, 3), (12, 12), (2.5, 4.25), (2.5, 4.25)),  # fractional stride, the map's middle
    ],
)
def test_cell_regions_follow_the_nearest_centre_rule(
    cells: tuple[int, int],
    size: tuple[int, int],
    y: tuple[float, float],
    x: tuple[float, float],
) -> None:
    geometry = MapGeometry(
        "layer", AxisGeometry(y[0], y[1], 3.0), AxisGeometry(x[0], x[1], 3.0), cells, "analytic"
    )
    axes = [_centres(*y, cells[0]), _centres(*x, cells[1])]
    expected = _pixel_cells(cells, size, axes)
    np.testing.assert_array_equal(cell_regions(cells, size, geometry), expected)
    for row in range(size[0]):  # the geometry's own rule agrees, pixel by pixel
        for col in range(size[1]):
            i, j = geometry.nearest_cell(row, col)
            assert expected[row, col] == i * cells[1] + j
    stretched = _pixel_cells(
        cells, size, [_stretched(size[0], cells[0]), _stretched(size[1], cells[1])]
    )
    np.testing.assert_array_equal(cell_regions(cells, size, None), stretched)
    # a geometry of another map's shape is not used: the map is stretched
    other = MapGeometry("o", geometry.y, geometry.x, (cells[0] + 1, cells[1]), "analytic")
    np.testing.assert_array_equal(cell_regions(cells, size, other), stretched)


def test_cell_regions_of_a_signal_and_the_measured_geometry(region_input: torch.Tensor) -> None:
    np.testing.assert_array_equal(cell_regions((3,), (10,), None), _nearest(10, _stretched(10, 3)))
    (found,) = class_maps(
        RegionSum().eval(), region_input, layers="features", methods="gradcam", trust=False,
        sanity=False,
    )  # fmt: skip
    assert found.geometry is not None
    assert (found.geometry.y.stride, found.geometry.y.offset) == (2.0, 1.0)
    assert (found.geometry.x.stride, found.geometry.x.offset) == (2.0, 1.0)
    with pytest.raises(ValueError, match="differ in rank"):
        cell_regions((3, 3), (9,), None)


# -- rank correlation -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_rank_correlation_equals_scipys_spearman_with_ties(seed: int) -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy (a grad-cam dependency) is absent")
    rng = np.random.default_rng(seed)
    shape = (5, 7)
    a = rng.integers(0, 4, shape).astype(np.float64)  # many ties
    b = a + rng.integers(-2, 3, shape) if seed % 2 else rng.normal(size=shape)
    expected = stats.spearmanr(a.reshape(-1), b.reshape(-1)).statistic
    assert rank_correlation(a, b) == pytest.approx(expected, abs=1e-12)


def test_rank_correlation_of_a_constant_map_is_nan() -> None:
    assert np.isnan(rank_correlation(np.ones((3, 3)), np.arange(9.0)))


# -- sanity check on the trained shapes model ------------------------------------------------------


@pytest.fixture(scope="module")
def shapes() -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    loaded = fm.load_model("shapes_cnn")
    images, labels = make_shapes(2 * len(CLASSES), seed=11)  # two of each class
    return loaded.model, torch.from_numpy(images), labels


def test_gradcam_depends_on_the_trained_layers_and_eigencam_does_not(
    shapes: tuple[nn.Module, torch.Tensor, np.ndarray],
) -> None:
    model, images, labels = shapes
    maps = class_maps(model, images, layers="relu2", methods="gradcam,eigencam", trust=False)
    assert [m.target.index for m in maps if m.method == "gradcam"] == labels.tolist()
    grad = [m for m in maps if m.method == "gradcam"]
    rhos = [m.sanity_rank_correlation for m in grad]
    assert all(r is not None for r in rhos)
    assert float(np.mean(rhos)) < SANITY_THRESHOLD - 0.25  # type: ignore[arg-type]
    assert sum(bool(m.sanity_failed) for m in grad) <= len(grad) // 4
    for m in grad:
        assert m.sanity_failed == (m.sanity_rank_correlation >= SANITY_THRESHOLD)  # type: ignore[operator]
    # EigenCAM reads the layer's activations alone, which nothing above the layer changes:
    # an edge detector in the sense of the check.
    for m in (m for m in maps if m.method == "eigencam"):
        assert m.sanity_rank_correlation == pytest.approx(1.0)
        assert m.sanity_failed is True


def test_the_sanity_check_leaves_every_random_state_and_the_model_as_they_were(
    shapes: tuple[nn.Module, torch.Tensor, np.ndarray],
) -> None:
    model, images, _ = shapes
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1234)
    cpu, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = class_maps(model, images[:2], layers="relu2", methods="gradcam", trust=False)
    assert torch.equal(torch.get_rng_state(), cpu)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    again = class_maps(model, images[:2], layers="relu2", methods="gradcam", trust=False)
    assert [m.sanity_rank_correlation for m in first] == [m.sanity_rank_correlation for m in again]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_reinitialised_is_seeded_and_keeps_the_callers_state() -> None:
    model = RegionSum()
    head = nn.Sequential(model, nn.Linear(2, 2))
    before = torch.get_rng_state()
    one = reinitialised(head, ["1"], seed=5)
    two = reinitialised(head, ["1"], seed=5)
    other = reinitialised(head, ["1"], seed=6)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(one[1].weight, two[1].weight)
    assert not torch.equal(one[1].weight, other[1].weight)
    assert torch.equal(one[0].features.weight, head[0].features.weight)  # not at a path: kept


@pytest.mark.gpu
def test_reinitialised_on_cuda_keeps_the_cuda_generators_state() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2)).cuda()
    torch.cuda.manual_seed_all(77)
    before = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    one = reinitialised(model, ["1"], seed=5)
    two = reinitialised(model, ["1"], seed=5)
    after = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.equal(one[1].weight, two[1].weight)


# -- which modules the check re-initialises ----------------------------------------------------


class Shared(nn.Module):
    """``shared`` runs before and after the layer ``mid``; only ``head`` is purely above it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.mid = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mid(self.shared(self.stem(x)))
        return self.head(self.shared(y).mean((2, 3)))


class Block(nn.Module):
    """A block whose own ``reset_parameters`` resets everything inside it, as some libraries'
    containers do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 4, 1)
        self.scale = nn.Parameter(torch.ones(4, 1, 1))

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.out.reset_parameters()
        nn.init.normal_(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(x))) * self.scale


class Enclosed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "layer", "kept"), [(Shared, "mid", "shared"), (Enclosed, "block.conv", "block")]
)
def test_modules_that_shape_the_layers_values_are_not_reinitialised(
    model: type[nn.Module], layer: str, kept: str, image_batch: torch.Tensor
) -> None:
    """EigenCAM depends only on the layer's own values: if a module that runs before or around
    the layer were re-initialised, those values would change and the map would pass the check."""
    x = image_batch[:, :1]
    maps = class_maps(model().eval(), x, layers=layer, methods="eigencam,gradcam", trust=False)
    eigen = next(m for m in maps if m.method == "eigencam")
    assert eigen.sanity_rank_correlation == pytest.approx(1.0)
    assert eigen.sanity_failed is True
    assert any(f"kept {kept}" in note for note in eigen.notes)


class MeanHead(nn.Module):
    """Class scores are the channel means of ``features``: nothing with weights is above it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 3, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def test_nothing_to_reinitialise_gives_no_number(image_batch: torch.Tensor) -> None:
    (found,) = class_maps(MeanHead().eval(), image_batch[:, :1], layers="features", trust=False)
    assert found.sanity_rank_correlation is None and found.sanity_failed is None
    assert any("no module above 'features' has parameters" in n for n in found.notes)
    assert found.to_json()["sanity_rank_correlation"] is None


class Gain(nn.Module):
    """A weight that re-initialises to zero: after the check, no gradient reaches the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Gained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 3, 3)
        self.gain = Gain()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain(self.features(x).mean((2, 3)))


def test_a_map_wiped_out_by_the_reinitialisation_passes(image_batch: torch.Tensor) -> None:
    model = Gained().eval()
    with torch.no_grad():
        model.features.bias.fill_(3.0)  # positive activations, so Grad-CAM is not constant
    (found,) = class_maps(model, image_batch[:, :1], layers="features", trust=False)
    assert np.ptp(found.array) > 0
    assert found.sanity_failed is False and found.sanity_rank_correlation is None
    assert any("changed entirely" in n for n in found.notes)


def test_a_constant_map_has_no_sanity_verdict() -> None:
    (found,) = class_maps(
        Gained().eval(), torch.ones(1, 1, 6, 6), layers="features", methods="layercam",
        trust=False,
    )  # fmt: skip
    assert np.ptp(found.array) == 0
    assert found.sanity_failed is None and found.sanity_rank_correlation is None
    assert any("the map is constant" in n for n in found.notes)
