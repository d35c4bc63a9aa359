"""ResNet-50 / ResNet-101 in plain ``torch.nn``, with torchvision's state-dict layout.

PyPI's torchvision does not import beside this project's torch, so the
network is defined here: the same modules under the same names as
torchvision's ``resnet50()`` / ``resnet101()`` (ResNet v1.5: the stride of a
stage's first bottleneck sits in its 3x3 convolution), so a torchvision
checkpoint (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...,
``layer1.0.downsample.0.weight``, ``fc.weight``) loads with
``load_state_dict(strict=True)``. Weights start with PyTorch's default
initialisation of each module (torchvision re-initialises its convolutions;
that only matters for training).

``forward`` returns the feature map the retrieval pipeline uses: the output
of ``layer4`` (conv5_x: the last bottleneck after its ReLU), stride 32, 2048
channels. ``avgpool`` and ``fc`` are the ImageNet classifier, kept so that the
state dict is torchvision's whole; :meth:`ResNet.logits` runs it.
"""
from __future__ import annotations

import torch
from torch import nn

#: Bottlenecks per stage (layer1..layer4).
LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
#: Output channels of a bottleneck = 4 x its inner width.
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 (width) -> 3x3 (width, stride) -> 1x1 (4 x width), each with batch norm, plus the shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            # A projection shortcut where the shape changes (torchvision's downsample.0 / downsample.1).
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """torchvision's ResNet with bottleneck blocks; ``forward`` gives the ``layer4`` map."""

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for i, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(channels, width, stride=2 if i > 0 and j == 0 else 1))
                channels = width * EXPANSION
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 (7x7, stride 2) + batch norm + ReLU + 3x3 max pool (stride 2): stride 4, 64 channels."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The ImageNet classifier on top of the map (global average pool + fc)."""
        return self.fc(torch.flatten(self.avgpool(self.forward(x)), 1))


def resnet(arch: str) -> ResNet:
    """``resnet50`` or ``resnet101`` with PyPI torch's default initialisation (seed it before calling)."""
    return ResNet(LAYERS[arch])
