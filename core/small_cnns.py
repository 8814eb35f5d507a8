"""The small CNNs of the registry (core.models): the Kaggle HCD and IDC seeds, BNCNN, SmallResNet.

Kept apart from the registry so that listing models (the Training page) does not import torch.
"""

from __future__ import annotations

import torch
from torch import nn


def _seed_head(in_features: int) -> nn.Sequential:
    """Both seeds' classifier: flatten -> dense 128 -> ReLU -> dropout 0.5 -> 2 logits."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(128, 2),
    )


class HCDSeedCNN(nn.Module):
    """The Kaggle HCD seed: three conv blocks (32/64/128) + dense 128 + dropout 0.5.

    Each block is conv3x3 -> BN -> ReLU -> maxpool2. The seed flattens a 12x12 map (96 px input);
    an adaptive pool keeps that shape for other input sizes.
    """

    def __init__(self) -> None:
        super().__init__()
        blocks = []
        in_ch = 3
        for out_ch in (32, 64, 128):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(12)
        self.classifier = _seed_head(128 * 12 * 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class IDCSeedCNN(nn.Module):
    """The IDC seed for 50x50 patches: six 3x3 convs (32, 32, 64, 64, 128, 128), a max-pool after
    each pair, then dense 128 + dropout 0.5. A 50 px input gives a 6x6 map; an adaptive pool keeps
    that shape for other sizes."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in (32, 64, 128):
            block = []
            for _ in range(2):
                block += [
                    nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
            block.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*block))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = _seed_head(128 * 6 * 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class BNCNN(nn.Module):
    """A BatchNorm CNN for any patch size: four blocks of two conv3x3-BN-ReLU (32, 64, 128, 256
    channels), a max-pool after the first three, global average pooling, dropout 0.3, 2 logits.

    Global pooling instead of the seeds' wide dense layer: 1.2M parameters, none of them tied to
    the input size, so the same net serves 50 px and 96 px patches.
    """

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate((32, 64, 128, 256)):
            layers = _conv_bn_relu(in_ch, out_ch) + _conv_bn_relu(out_ch, out_ch)
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(in_ch, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """ResNet's basic block: two conv3x3-BN, identity (or 1x1 projection) shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(in_ch, out_ch, stride),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_ch == out_ch
            else nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for small patches: a 3x3 stem (no stride, no max-pool: a 50 px patch keeps its
    detail, where torchvision's ResNet stem divides it by 4), then three stages of two basic
    blocks (32, 64, 128 channels; stride 2 at stages 2 and 3), global average pooling, 2 logits
    (0.7M parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, 32))
        stages, in_ch = [], 32
        for out_ch, stride in ((32, 1), (64, 2), (128, 2)):
            stages.append(
                nn.Sequential(_BasicBlock(in_ch, out_ch, stride), _BasicBlock(out_ch, out_ch, 1))
            )
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
