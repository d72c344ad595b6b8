"""The seed's ResNet-50 for CIFAR-100, written from the facts of weiaicunzai/pytorch-cifar100.

The module tree (and so the state_dict) is laid out exactly as that repository's
``models/resnet.py``: ``conv1``, ``conv2_x`` .. ``conv5_x`` of ``BottleNeck`` blocks,
``avg_pool`` and ``fc``; each block holds ``residual_function`` (indices 0..7) and
``shortcut`` (empty, or 0: Conv1x1 + 1: BN).  A ``weights/resnet50-best.pth``
trained with that repository therefore loads here with ``strict=True``.
"""
import torch
from torch import nn
from torch.nn import functional as F


class BottleNeck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original builds nn.ReLU(inplace=True) inside forward; the functional
        # form computes the same and keeps the graph traceable.
        return F.relu(self.residual_function(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, block_counts=(3, 4, 6, 3), num_classes: int = 100):
        super().__init__()
        self.in_channels = 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.conv2_x = self._make_stage(64, block_counts[0], 1)
        self.conv3_x = self._make_stage(128, block_counts[1], 2)
        self.conv4_x = self._make_stage(256, block_counts[2], 2)
        self.conv5_x = self._make_stage(512, block_counts[3], 2)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BottleNeck.expansion, num_classes)

    def _make_stage(self, width: int, count: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (count - 1):
            blocks.append(BottleNeck(self.in_channels, width, s))
            self.in_channels = width * BottleNeck.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2_x(x)
        x = self.conv3_x(x)
        x = self.conv4_x(x)
        x = self.conv5_x(x)
        x = self.avg_pool(x)
        x = torch.flatten(x, 1)  # the original: x.view(x.size(0), -1)
        return self.fc(x)


def resnet50(num_classes: int = 100) -> CifarResNet:
    return CifarResNet((3, 4, 6, 3), num_classes)
