"""The CNN the pruning benchmark trains on Fashion-MNIST: a small VGG-style network (five 3x3 conv layers
with batch norm, three poolings, two linear layers), deeper than ccexam's two-conv MNIST CNN so that its
layers differ in cost and in how much accuracy they carry -- where choosing what to cut matters.
`toolchain export benchmarks/fashion_cnn.py:make --weights W --input-shape pixel_values:1x1x28x28`."""

from __future__ import annotations


def make():
    from torch import nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10),
    )
