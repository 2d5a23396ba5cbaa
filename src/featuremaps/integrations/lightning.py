"""A PyTorch Lightning callback that watches feature maps while a ``Trainer`` fits.

The Lightning face of :func:`featuremaps.watch` (capture → look → writer): the callback looks at a
fixed probe batch every ``every`` optimiser steps (``on_train_batch_end``) and at the end of each
validation epoch, on the rank-zero process only, and logs to the trainer's logger when it is a
TensorBoard logger (else to ``writer``). Needs the ``lightning`` extra (``pytorch-lightning``,
or the ``lightning`` package, whichever is installed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from featuremaps._errors import OptionError
from featuremaps.render import GridOptions
from featuremaps.watch import Look, LookWriter, Watcher, watch
from featuremaps.watch_writers import TensorBoardWriter

__all__ = ["FeatureMapsCallback"]


def _lightning() -> Any:
    """The installed Lightning package (``lightning.pytorch`` or ``pytorch_lightning``)."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise OptionError(
                "FeatureMapsCallback needs PyTorch Lightning, which is not installed; pip "
                "install 'featuremaps[lightning]'"
            ) from None
    return pl


def _callback_base() -> type:
    return _lightning().Callback  # type: ignore[no-any-return]


class FeatureMapsCallback(_callback_base()):  # type: ignore[misc]
    """Look at the model's feature maps on ``inputs`` every ``every`` training steps and after
    each validation epoch (see :func:`featuremaps.watch` for ``layers``, ``types``, ``grid``
    and ``sample``).

    Looks go to the trainer's logger when it is a ``TensorBoardLogger``, else to ``writer`` (a
    folder path or ``SummaryWriter`` for event files, a
    :class:`~featuremaps.watch_writers.FolderWriter`, or None: kept in :attr:`looks` only).
    Only the rank-zero process looks; one step is looked at once however many hooks reach it.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        *,
        layers: str | Sequence[str] | None = None,
        types: str | Sequence[str] | None = None,
        every: int = 100,
        writer: LookWriter | str | Path | Any | None = None,
        grid: GridOptions | None = None,
        sample: int = 0,
        first: bool = True,
        on_validation: bool = True,
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.options: dict[str, Any] = {
            "layers": layers,
            "types": types,
            "every": every,
            "grid": grid,
            "sample": sample,
            "first": first,
        }
        self.writer = writer
        self.on_validation = on_validation
        self.looks: list[Look] = []
        self._watcher: Watcher | None = None
        self._seen: set[int] = set()

    def _ensure(self, trainer: Any, pl_module: Any) -> Watcher:
        if self._watcher is None:
            writer: Any = self.writer
            loggers = _lightning().loggers
            for logger in trainer.loggers:
                if isinstance(logger, loggers.TensorBoardLogger):
                    writer = TensorBoardWriter(logger.experiment)
                    break
            self._watcher = watch(pl_module, self.inputs, writer=writer, **self.options)
        return self._watcher

    def _look(self, trainer: Any, pl_module: Any, due: bool) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        watcher = self._ensure(trainer, pl_module)
        step = int(trainer.global_step)
        if step in self._seen or not (due or watcher.due(step)):
            return
        self._seen.add(step)
        self.looks.append(watcher.look(step))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Look before the first step (step 0), unless the watch was made with first=False."""
        self._look(trainer, pl_module, due=False)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Look when the optimiser step just taken is a multiple of ``every``."""
        self._look(trainer, pl_module, due=False)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Look after each validation epoch (at the trainer's current step)."""
        if self.on_validation:
            self._look(trainer, pl_module, due=True)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Flush the writer."""
        if self._watcher is not None:
            self._watcher.close()
