"""A tiny classifier for the engine tests, loaded by every Ray worker from this file's path.

When the file named by ``FEATUREMAPS_TEST_KILL_FLAG`` exists, the first worker process (never
the test process itself) that runs a forward pass deletes it and dies with ``os._exit(1)``: a
worker killed in the middle of a run, exactly once.
"""

from __future__ import annotations

import os

import torch
from torch import nn

KILL_FLAG = "FEATUREMAPS_TEST_KILL_FLAG"
DRIVER_PID = "FEATUREMAPS_TEST_DRIVER_PID"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _maybe_die()
        y = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(y), 1))


def _maybe_die() -> None:
    flag = os.environ.get(KILL_FLAG)
    if not flag or str(os.getpid()) == os.environ.get(DRIVER_PID):
        return
    try:
        os.remove(flag)
    except FileNotFoundError:
        return  # not armed, or another worker took it
    os._exit(1)


def build() -> Net:
    torch.manual_seed(0)
    return Net().eval()
