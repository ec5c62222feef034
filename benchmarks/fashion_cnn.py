"""The CNN the pruning benchmark trains on Fashion-MNIST: ccexam's MNIST architecture (2 conv + 2 linear),
from scratch. `toolchain export benchmarks/fashion_cnn.py:make --weights W --input-shape pixel_values:1x1x28x28`."""

from __future__ import annotations


def make():
    from ccexam.models import MNISTNet  # never ccexam.inference: it imports torchvision

    return MNISTNet(28)
