"""Predictions: a classifier's top classes, named by its weights' own category list.

A pure transform after capture (… → capture → **predictions** → manifest/report). torchvision's
weights entries carry their category names in ``meta["categories"]`` whether or not the weights
themselves can be downloaded, so a model running with random weights still gets named classes;
those predictions are then marked ``meaningless``, and say so wherever they are shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["TOP_K", "categories", "prediction", "prediction_lines"]

TOP_K = 5


def categories(loaded: Any) -> tuple[list[str], str] | None:
    """The category names of a loaded model's weights and where they come from, or ``None``.

    ``loaded`` is a :class:`~featuremaps.models.LoadedModel`; for a torchvision model loaded
    without weights (``--weights none``) its default weights entry names the categories, and
    featuremaps' own models (``shapes_cnn``) name them in their model card.
    """
    if getattr(loaded, "source", None) == "featuremaps":  # our own trained models' cards
        from featuremaps.zoo import card

        classes = card(loaded.spec).get("classes")
        return ([str(n) for n in classes], f"model card {loaded.spec}") if classes else None
    enum = getattr(loaded, "weights_enum", None)
    if enum is None and getattr(loaded, "source", None) == "torchvision":
        import torchvision

        try:
            enum = torchvision.models.get_model_weights(loaded.spec).DEFAULT
        except (ValueError, KeyError, AttributeError):
            enum = None
    meta = getattr(enum, "meta", None)
    names = meta.get("categories") if isinstance(meta, dict) else None
    if not names:
        return None
    return [str(n) for n in names], f"weights metadata {enum}"


def prediction(
    output: Any, names: list[str], source: str, random_weights: bool, sample: int = 0
) -> dict[str, Any] | None:
    """The top-5 classes of ``output`` for ``sample``: the manifest's ``prediction``.

    ``output`` must be a tensor (N, len(names)) of class scores (logits); probabilities are
    its softmax, in float64. ``None`` when the output is not such a tensor.
    """
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        return None
    if output.shape[1] != len(names) or not 0 <= sample < output.shape[0]:
        return None
    if output.is_complex() or not output.is_floating_point():
        return None
    logits = output[sample].detach().to(torch.float64).cpu().numpy()
    if not np.isfinite(logits).all():
        return None
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    top = np.argsort(-probabilities, kind="stable")[:TOP_K]
    return {
        "source": source,
        "random_weights": bool(random_weights),
        "meaningless": bool(random_weights),
        "top": [
            {"index": int(i), "label": names[int(i)], "probability": float(probabilities[i])}
            for i in top
        ],
    }


def prediction_lines(found: dict[str, Any]) -> list[str]:
    """The prediction as terminal lines."""
    head = f"top-{len(found['top'])} classes ({found['source']})"
    if found["meaningless"]:
        head += ": MEANINGLESS, the weights are random"
    rows = [f"  {p['probability']:7.2%}  {p['label']} (#{p['index']})" for p in found["top"]]
    return [head, *rows]
