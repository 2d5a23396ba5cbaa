"""Output folder: safe names, atomic replacement, refusing foreign folders, streamed safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

import featuremaps as fm
from featuremaps.io import OutputFolder, safe_filename


@given(st.text(max_size=300), st.integers(min_value=0, max_value=9999))
def test_safe_filenames_never_leave_the_folder(name: str, index: int) -> None:
    out = safe_filename(index, name)
    assert "/" not in out and "\\" not in out and "#" not in out and ".." not in out
    assert not out.startswith(".") and out.endswith(".png") and len(out) <= 90
    assert out.startswith(f"{index:04d}_")


def test_hostile_names_are_neutralised() -> None:
    assert safe_filename(3, "../../etc/passwd") == "0003_etc_passwd.png"
    assert safe_filename(7, "layer1.0.relu#2") == "0007_layer1.0.relu_2.png"
    assert safe_filename(1, "<img src=x onerror=alert(1)>") == "0001_img_src_x_onerror_alert_1_.png"
    assert safe_filename(0, "") == "0000_output.png"


def test_paths_outside_are_refused(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    with pytest.raises(fm.OutputError, match="would leave the output folder"):
        folder.path("../escape.png")
    with pytest.raises(fm.OutputError, match="would leave the output folder"):
        folder.path("/etc/x")
    folder.discard()
    assert not (tmp_path / "out").exists()


def _run(target: Path, files: dict[str, bytes]) -> None:
    with OutputFolder(target) as folder:
        for name, data in files.items():
            folder.write_bytes(name, data)
        folder.write_json("manifest.json", {"tool": "featuremaps", "files": sorted(files)})


def test_rerun_replaces_the_whole_previous_run(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _run(target, {"a.png": b"old", "b.png": b"old"})
    _run(target, {"a.png": b"new"})
    assert sorted(p.name for p in target.iterdir()) == ["a.png", "manifest.json"]
    assert (target / "a.png").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folders left behind


def test_failed_run_leaves_previous_results_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _run(target, {"a.png": b"old"})
    with pytest.raises(RuntimeError), OutputFolder(target) as folder:
        folder.write_bytes("a.png", b"half")
        raise RuntimeError("render crashed")
    assert (target / "a.png").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_foreign_folder_and_file_are_refused(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(fm.OutputError, match=r"refusing to replace .*thesis.*no featuremaps"):
        OutputFolder(mine)
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(fm.OutputError, match=r"output path .*file.txt' is a file"):
        OutputFolder(afile)
    assert (mine / "chapter1.tex").read_text() == "precious"


def test_manifest_json_is_strict(tmp_path: Path) -> None:
    with OutputFolder(tmp_path / "o") as folder:
        folder.write_json("manifest.json", {"tool": "featuremaps", "x": float("nan"), "t": (1, 2)})
    text = (tmp_path / "o" / "manifest.json").read_text()
    assert json.loads(text) == {"tool": "featuremaps", "x": None, "t": [1, 2]}
    assert "NaN" not in text


def test_streamed_safetensors_read_back_with_the_library(tmp_path: Path) -> None:
    tensors = {
        "conv1": torch.randn(1, 4, 5, 3),
        "relu#2": torch.randn(2, 3).to(torch.float16),
        "odd": torch.arange(7, dtype=torch.int64),
        "strided": torch.randn(4, 6).t(),
    }
    with OutputFolder(tmp_path / "o") as folder:
        stream = folder.arrays("arrays.safetensors", {"model": "tiny"})
        for name, t in tensors.items():
            stream.add(name, t)
        stream.close()
        folder.write_json("manifest.json", {"tool": "featuremaps"})
    with safe_open(str(tmp_path / "o" / "arrays.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(tensors)
        assert f.metadata() == {"model": "tiny"}
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, t.float(), rtol=0, atol=0)


def _json_module_text(values: list[object]) -> str:
    """The oracle: what the json module writes, with NaN/Infinity as null."""
    import re

    return re.sub(r"-?Infinity|NaN", "null", json.dumps(values, separators=(",", ":")))


_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.floats(min_value=-1e-3, max_value=1e-3),  # the spellings that differ: 1e-05, 1.5e-07
    st.floats(min_value=1e15, max_value=1e17),  # where positions turn into exponents
    st.integers(-(2**70), 2**70),
    st.none(),
)


@given(st.lists(_NUMBERS, max_size=50))
def test_number_lists_are_written_as_the_json_module_writes_them(values: list[object]) -> None:
    from featuremaps.io import number_list_json

    assert number_list_json(values) == _json_module_text(values)


def test_number_lists_without_orjson_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import featuremaps.io as io_module

    values = [1e-05, -2.5e-05, 10.00001, 1.5e-07, 1e16, float("nan"), None, 3, 0.1]
    with_orjson = io_module.number_list_json(values)
    monkeypatch.setattr(io_module, "orjson", None)
    assert io_module.number_list_json(values) == with_orjson == _json_module_text(values)
    assert with_orjson == "[1e-05,-2.5e-05,10.00001,1.5e-07,1e+16,null,null,3,0.1]"
