"""A small Conv1d network on matplotlib's bundled EEG recording (``eeg.dat``), from the CLI route.

``eeg.dat`` holds 800 time samples x 4 channels as float64 (each channel standardised), stored
row by row: ``numpy.fromfile(path, dtype=float).reshape(800, 4)``, the layout matplotlib's own
"MRI with EEG" example reads. It is saved as a (4, 800) ``.npy`` signal and fed like any file:
each 1-D layer is drawn as a channel x time heat map on the input's time axis, with the input
traces above and the strongest channels as lines below. The weights are random (seeded).

    python examples/eeg_signal.py [OUT_DIR]
"""

import sys
from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
from torch import nn

import featuremaps as fm

path = matplotlib.cbook.get_sample_data("eeg.dat", asfileobj=False)
eeg = np.fromfile(path, dtype=np.float64).reshape(800, 4).T.astype(np.float32)

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv1d(4, 16, 9, stride=2, padding=4),
    nn.ReLU(),
    nn.MaxPool1d(2),
    nn.Conv1d(16, 32, 5, padding=2),
    nn.ReLU(),
    nn.AdaptiveAvgPool1d(1),
    nn.Flatten(),
    nn.Linear(32, 2),
).eval()

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/eeg_signal")
signal = out.parent / "eeg.npy"
signal.parent.mkdir(parents=True, exist_ok=True)
np.save(signal, eeg)
[result] = fm.visualize(model, signal, out=out)
drawn = [r for r in result.records if r.drawn_as == "signal heat map"]
print(f"{len(drawn)} signal layers drawn; open {result.report}")
