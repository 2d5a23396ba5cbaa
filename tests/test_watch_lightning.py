"""The Lightning callback: two tiny epochs on CPU, the trainer's TensorBoard logs read back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.watch_writers import tags

pl = pytest.importorskip("pytorch_lightning", reason="needs the lightning extra")
pytest.importorskip("tensorboard", reason="needs the tensorboard extra")


class Tiny(pl.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_callback_logs_to_the_trainers_tensorboard_logger(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from featuremaps.integrations.lightning import FeatureMapsCallback

    generator = torch.Generator().manual_seed(5)
    data = torch.utils.data.TensorDataset(
        torch.randn(12, 3, 8, 8, generator=generator),
        torch.randint(0, 2, (12,), generator=generator),
    )
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    probe = torch.randn(2, 3, 8, 8, generator=generator)
    callback = FeatureMapsCallback(probe, every=2, layers=["net.0", "net.1"])
    logger = TensorBoardLogger(str(tmp_path), name="tiny")
    trainer = pl.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    model = Tiny()
    trainer.fit(model, loader, loader)

    # 3 batches per epoch: every 2 steps (0, 2, 4, 6) and after each validation (3, 6), once each.
    assert [look.step for look in callback.looks] == [0, 2, 3, 4, 6]
    events = EventAccumulator(
        logger.log_dir, size_guidance={"images": 0, "histograms": 0, "scalars": 0}
    )
    events.Reload()
    [run] = fm.visualize(model, probe, layers=["net.0", "net.1"], report=False)
    for name in ("net.0", "net.1"):
        tag = tags(name)
        assert [e.step for e in events.Images(tag["grid"])] == [0, 2, 3, 4, 6]
        assert [e.step for e in events.Scalars(tag["dead_fraction"])] == [0, 2, 3, 4, 6]
        assert [e.step for e in events.Histograms(tag["histogram"])] == [0, 2, 3, 4, 6]
        last = _decode(events.Images(tag["grid"])[-1].encoded_image_string)
        np.testing.assert_array_equal(last, _decode(run.grids[name].to_png()))
    assert "val_loss" in events.Tags()["scalars"]


class _Trainer:
    """What the callback reads of a trainer: rank, sanity checking, step and loggers."""

    def __init__(self, rank_zero: bool, sanity: bool = False) -> None:
        self.is_global_zero = rank_zero
        self.sanity_checking = sanity
        self.global_step = 0
        self.loggers: list[object] = []


def test_only_rank_zero_looks_and_never_while_sanity_checking(tmp_path: Path) -> None:
    from featuremaps.integrations.lightning import FeatureMapsCallback
    from featuremaps.watch_writers import FolderWriter

    model = Tiny()
    probe = torch.randn(2, 3, 8, 8)
    other = FeatureMapsCallback(probe, every=1, writer=FolderWriter(tmp_path / "other"))
    other.on_train_start(_Trainer(rank_zero=False), model)
    other.on_validation_epoch_end(_Trainer(rank_zero=False), model)
    assert other.looks == [] and not (tmp_path / "other").exists()

    main = FeatureMapsCallback(probe, every=1, writer=FolderWriter(tmp_path / "main"))
    main.on_validation_epoch_end(_Trainer(rank_zero=True, sanity=True), model)
    assert main.looks == []
    trainer = _Trainer(rank_zero=True)
    main.on_train_start(trainer, model)
    trainer.global_step = 1
    main.on_train_batch_end(trainer, model, None, None, 0)
    main.on_validation_epoch_end(trainer, model)  # the same step: not looked at twice
    assert [look.step for look in main.looks] == [0, 1]
    assert (tmp_path / "main" / "steps" / "00000001" / "look.json").is_file()
