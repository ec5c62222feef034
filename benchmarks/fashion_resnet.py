"""A small ResNet the pruning benchmark trains on Fashion-MNIST: a 3x3 stem and three basic residual blocks
(32, 64, 128 channels; the last two downsample, with 1x1 projections), global average pooling, a linear
head. The residual additions tie the channels of a stage together, which Torch-Pruning's dependency graph
keeps consistent; the blocks' inner convolutions are free.
`toolchain export benchmarks/fashion_resnet.py:make --weights W --input-shape pixel_values:1x1x28x28`."""

from __future__ import annotations


def make():
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.layer1 = Block(32, 32, 1)
            self.layer2 = Block(32, 64, 2)
            self.layer3 = Block(64, 128, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(self.stem(x))))
            return self.fc(self.pool(x).flatten(1))

    return ResNet()
