"""Train the ``shapes_cnn`` zoo model and write its weights and card into the package.

    .venv/bin/python scripts/train_shapes.py            # seed 0: the committed weights
    .venv/bin/python scripts/train_shapes.py --out-dir /tmp/shapes --seed 1

Writes ``shapes_cnn.safetensors`` (the state_dict) and ``shapes_cnn.json`` (classes, input size,
settings, train/test accuracy, how to reproduce) to ``src/featuremaps/zoo/`` unless ``--out-dir``
says otherwise. About a minute on 2 idle CPU cores; no network, no GPU. The same seed gives the
same weights on the same machine and torch build; other CPUs may differ in the last float bits,
so compare the accuracies in the card rather than the file hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from featuremaps.zoo.shapes import CLASSES, INPUT_SIZE, evaluate, make_shapes, train

NAME = "shapes_cnn"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "featuremaps" / "zoo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs (default: 8)")
    parser.add_argument("--n-train", type=int, default=5000, help="fresh images per epoch")
    parser.add_argument("--test-seed", type=int, default=1000, help="seed of the test set")
    parser.add_argument("--n-test", type=int, default=3000, help="test images (default: 3000)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--out-dir", type=Path, default=PACKAGE_DIR, help="where to write")
    args = parser.parse_args(argv)

    print(f"training {NAME}: seed {args.seed}, {args.epochs} epochs x {args.n_train} images")
    model, result = train(args.seed, args.epochs, args.n_train, threads=args.threads, log=print)
    test_images, test_labels = make_shapes(args.n_test, seed=args.test_seed)
    test_accuracy = evaluate(model, test_images, test_labels)
    per_class = {
        name: evaluate(model, test_images[test_labels == k], test_labels[test_labels == k])
        for k, name in enumerate(CLASSES)
    }
    print(f"test accuracy {test_accuracy:.2%} on {args.n_test} images (seed {args.test_seed})")
    print("per class: " + ", ".join(f"{k} {v:.1%}" for k, v in per_class.items()))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.out_dir / f"{NAME}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"name": NAME, "seed": str(args.seed)})
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    command = (
        f"python scripts/train_shapes.py --seed {args.seed} --epochs {args.epochs} "
        f"--n-train {args.n_train} --test-seed {args.test_seed} --n-test {args.n_test} "
        f"--threads {args.threads}"
    )
    card = {
        "name": NAME,
        "architecture": "featuremaps.zoo.shapes.ShapesNet",
        "classes": list(CLASSES),
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "input": "RGB, float32 in [0, 1], shape (N, 3, 64, 64); no normalisation",
        "mean": None,
        "std": None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "epochs": args.epochs,
        "n_train_per_epoch": args.n_train,
        "batch_size": result.batch_size,
        "lr": result.lr,
        "weight_decay": result.weight_decay,
        "threads": args.threads,
        "train_accuracy": round(result.train_accuracy, 4),
        "train_loss": round(result.losses[-1], 4),
        "test_seed": args.test_seed,
        "n_test": args.n_test,
        "test_accuracy": round(test_accuracy, 4),
        "test_accuracy_per_class": {k: round(v, 4) for k, v in per_class.items()},
        "train_seconds": round(result.seconds, 1),
        "sha256": digest,
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "reproduce": command,
        "note": (
            "Deterministic for a seed on one machine and torch build; other CPUs may differ in "
            "the last float bits (and so in the hash), not in the accuracy to speak of."
        ),
    }
    card_path = args.out_dir / f"{NAME}.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    size_kb = weights_path.stat().st_size / 1024
    print(f"wrote {weights_path} ({size_kb:.0f} KiB) and {card_path} in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
