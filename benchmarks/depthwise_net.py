"""A MobileNetV3-small-like depthwise-separable network (random weights) for `module:factory` use:

    toolchain export benchmarks/depthwise_net.py:make -o dw.onnx --input-shape pixel_values:1x3x224x224

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, hardswish) with narrow channels: the
kind of net where INT8 can run slower than FP32 on a CPU, because depthwise convolutions do little
arithmetic per byte and QDQ adds (de)quantization around each of them.
"""

from __future__ import annotations

import torch
from torch import nn

# (expand, out, stride) per block, as in MobileNetV3-small's narrow early stages
BLOCKS = [(16, 16, 2), (72, 24, 2), (88, 24, 1), (96, 40, 2), (240, 40, 1), (120, 48, 1), (144, 48, 1),
          (288, 96, 2), (576, 96, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, expand: int, cout: int, stride: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(expand, expand, 3, stride, 1, groups=expand, bias=False),
                                       nn.BatchNorm2d(expand), nn.Hardswish())
        self.project = nn.Sequential(nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class DepthwiseNet(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        layers, cin = [], 16
        for expand, cout, stride in BLOCKS:
            layers.append(InvertedResidual(cin, expand, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(cin, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, classes))

    def forward(self, pixel_values):
        return self.head(self.blocks(self.stem(pixel_values)))


def make() -> DepthwiseNet:
    """Random weights with BatchNorm statistics gathered on random inputs (realistic activation scale)."""
    torch.manual_seed(0)
    net = DepthwiseNet()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, 224, 224))
    return net.eval()
