"""Watch shapes_cnn's feature maps while it trains from scratch on its generated shapes.

ShapesNet (the bundled shapes_cnn's architecture) is trained for 300 steps on CPU (under a
minute); every 50 steps ``fm.watch`` looks at conv1, relu1, relu2 and relu3 on a fixed probe
batch of one image per class and writes the look twice: TensorBoard event files (when the
``tensorboard`` extra is installed) and a plain folder of PNG + JSON per step, which
``featuremaps report-timeline`` turns into a page with a slider over steps.

    python examples/train_watch.py [OUT_DIR]
    tensorboard --logdir OUT_DIR/tensorboard
    featuremaps report-timeline OUT_DIR/looks
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import featuremaps as fm
from featuremaps.commands.report_timeline import write_timeline
from featuremaps.watch_writers import FolderWriter
from featuremaps.zoo.shapes import CLASSES, ShapesNet, make_shapes

STEPS, EVERY, BATCH = 300, 50, 32
out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/train_watch")

torch.manual_seed(0)
model = ShapesNet()
nn.init.normal_(model.conv1.weight, std=0.01)  # conv1 starts near zero: what it learns shows
optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)

images, labels = make_shapes(STEPS * BATCH // 4, seed=[1, 0])
x, y = torch.from_numpy(images), torch.from_numpy(labels)
probe_images, probe_labels = make_shapes(60, seed=[1, 1])
probe = torch.from_numpy(
    np.stack([probe_images[probe_labels == k][0] for k in range(len(CLASSES))])
)

writers: list[object] = [FolderWriter(out / "looks")]
if importlib.util.find_spec("tensorboard") is not None:
    writers.append(out / "tensorboard")
layers = ["conv1", "relu1", "relu2", "relu3"]
with fm.watch(model, probe, layers=layers, every=EVERY, writer=writers) as watcher:
    for step in range(STEPS):
        watcher.step(step)
        begin = (step * BATCH) % (len(x) - BATCH)
        model.train()
        loss = nn.functional.cross_entropy(
            model(x[begin : begin + BATCH]), y[begin : begin + BATCH]
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % EVERY == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    last = watcher.step(STEPS)  # the final weights

assert last is not None
for layer in last.layers:
    print(
        f"step {STEPS}: {layer.name}: dead channels {layer.dead_fraction:.0%}, "
        f"mean |x| {layer.mean_abs:.3g}"
    )
page = write_timeline(out / "looks")
print(f"wrote {page}; open TensorBoard with: tensorboard --logdir {out / 'tensorboard'}")
