"""Layer discovery and selection: globs, regexes, types, containers, calls, helpful errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import featuremaps as fm


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


X = torch.zeros(1, 3, 32, 32)


def test_glob_selects_leaves_under_a_container(resnet18: nn.Module) -> None:
    names = fm.capture(resnet18, X, layers="layer1.0.*").names()
    assert names == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.relu#2",
    ]


def test_exact_container_name_selects_the_container(resnet18: nn.Module) -> None:
    c = fm.capture(resnet18, X, layers=["layer2", "fc"])
    assert c.names() == ["layer2", "fc"]
    assert c[0].module_type == "Sequential" and c[0].shape == (1, 128, 4, 4)


def test_regex_type_and_single_call(resnet18: nn.Module) -> None:
    assert fm.capture(resnet18, X, layers=r"re:layer4\.1\.conv\d$").names() == [
        "layer4.1.conv1",
        "layer4.1.conv2",
    ]
    convs = fm.capture(resnet18, X, types="Conv2d").names()
    assert len(convs) == 20 and all("conv" in n or "downsample" in n for n in convs)
    assert fm.capture(resnet18, X, layers="layer3.1.relu#2").names() == ["layer3.1.relu#2"]
    assert fm.capture(resnet18, X, layers="layer3.1.relu").names() == [
        "layer3.1.relu",
        "layer3.1.relu#2",
    ]


def test_containers_option_adds_parents_in_execution_order(resnet18: nn.Module) -> None:
    names = fm.capture(resnet18, X, layers="layer1*", containers=True).names()
    assert names[-3:] == ["layer1.1.relu#2", "layer1.1", "layer1"]


def test_unknown_layer_suggests_close_names(resnet18: nn.Module) -> None:
    with pytest.raises(
        fm.LayerError,
        match=r"layer 'layer5' not found in resnet; did you mean 'layer4'.*"
        r"Run 'featuremaps layers resnet'",
    ):
        fm.capture(resnet18, X, layers="layer5", model_label="resnet")


def test_a_model_object_is_pointed_to_list_layers_not_to_a_command(
    resnet18: nn.Module, tmp_path: Path
) -> None:
    # 'featuremaps layers ResNet' cannot run: a model object's layers are listed in Python.
    hint = r"Run fm\.list_layers\(model\) to list"
    with pytest.raises(fm.LayerError, match=rf"not found in ResNet; did you mean .*{hint}"):
        fm.visualize(resnet18, X, layers="layer5", out=tmp_path / "out")
    with pytest.raises(fm.LayerError, match=rf"ran 1 time .*{hint} every call\.$"):
        fm.capture(resnet18, X, layers="layer1#2")


def test_unknown_type_lists_types_present(resnet18: nn.Module) -> None:
    with pytest.raises(fm.LayerError, match=r"has type Conv3d; types there: .*Conv2d"):
        fm.capture(resnet18, X, types="Conv3d")


def test_a_type_in_the_wrong_case_suggests_the_real_name(resnet18: nn.Module) -> None:
    with pytest.raises(fm.LayerError, match=r"types there: .*ReLU; did you mean 'ReLU'\? Run"):
        fm.capture(resnet18, X, types="relu")


def test_bad_regex_is_a_layer_error(resnet18: nn.Module) -> None:
    with pytest.raises(fm.LayerError, match="not a valid regular expression"):
        fm.capture(resnet18, X, layers="re:conv(")


def test_list_layers_dry_run_has_shapes_and_calls(resnet18: nn.Module) -> None:
    infos = fm.list_layers(resnet18, X)
    assert [i.name for i in infos] == fm.capture(resnet18, X).names()
    first = infos[0]
    assert (first.name, first.call, first.module_type, first.shape) == (
        "conv1",
        1,
        "Conv2d",
        (1, 64, 16, 16),
    )
    relu2 = next(i for i in infos if i.name == "layer1.0.relu#2")
    assert relu2.call == 2 and relu2.module == "layer1.0.relu"
    static = fm.list_layers(resnet18)
    assert len(static) == 52 and all(i.shape is None for i in static)


def test_module_without_children_is_its_own_layer() -> None:
    conv = nn.Conv2d(3, 4, 3)
    c = fm.capture(conv, torch.zeros(1, 3, 5, 5))
    assert c.names() == ["output"]
    assert (c[0].module, c[0].module_type, c[0].shape) == ("", "Conv2d", (1, 4, 3, 3))
