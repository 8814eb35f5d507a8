"""Model registry: name -> builder, default input size, Grad-CAM target layer, preprocessing.

The registry feeds the UI's select boxes and the parametrized tests. Every model returns logits
of shape (N, 2); class 1 is tumour. Pretrained ImageNet weights are used only when they already
sit in the local torch hub cache: nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESCALE_MEAN = (0.0, 0.0, 0.0)  # the Keras seeds only rescale to [0, 1]
RESCALE_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    input_size: int  # default side length in pixels; the card records what was trained
    target_layer: str  # dotted path for Grad-CAM, e.g. "layer4.-1"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: Callable[[bool], tuple[nn.Module, str | None]]  # pretrained -> (model, notice)
    torchvision_weights: str | None = None  # e.g. "ResNet18_Weights.IMAGENET1K_V1"


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


def _seed_builder(cls: type[nn.Module]) -> Callable[[bool], tuple[nn.Module, str | None]]:
    """Builder of a model defined here (no pretrained weights exist for it)."""

    def build(pretrained: bool) -> tuple[nn.Module, str | None]:
        notice = (
            f"{cls.__name__} has no pretrained weights; training from scratch."
            if pretrained
            else None
        )
        return cls(), notice

    return build


def cached_weights_path(weights_name: str) -> Path:
    """Where torch.hub keeps the file for a torchvision weights enum, e.g. 'ResNet18_Weights.IMAGENET1K_V1'."""
    import torchvision.models as tvm

    enum_name, member = weights_name.split(".")
    url = getattr(getattr(tvm, enum_name), member).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _replace_head(model: nn.Module, name: str) -> nn.Module:
    if name.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, 2)
    elif name.startswith("densenet"):
        model.classifier = nn.Linear(model.classifier.in_features, 2)
    elif name.startswith("efficientnet"):
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, 2)
    else:  # pragma: no cover - registry and this function are edited together
        raise KeyError(name)
    return model


def _torchvision_builder(
    name: str, weights_name: str
) -> Callable[[bool], tuple[nn.Module, str | None]]:
    def build(pretrained: bool) -> tuple[nn.Module, str | None]:
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None)
        notice = None
        if pretrained:
            path = cached_weights_path(weights_name)
            if path.is_file():
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            else:
                notice = (
                    f"No ImageNet weights for {name} in the local torch cache ({path}); "
                    "nothing is downloaded, so the model trains from scratch."
                )
        return _replace_head(model, name), notice

    return build


def _tv(name: str, weights: str, target_layer: str, description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=description,
        input_size=96,
        target_layer=target_layer,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        builder=_torchvision_builder(name, weights),
        torchvision_weights=weights,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="hcd_cnn",
            description="Kaggle HCD seed CNN: 3 conv blocks 32/64/128 + dense 128 (2.45M params, 96 px)",
            input_size=96,
            target_layer="features.2.2",
            mean=RESCALE_MEAN,
            std=RESCALE_STD,
            builder=_seed_builder(HCDSeedCNN),
        ),
        ModelSpec(
            name="idc_cnn",
            description="IDC seed CNN: 6 convs 32-32-64-64-128-128 + dense 128 (50 px)",
            input_size=50,
            target_layer="features.2.5",
            mean=RESCALE_MEAN,
            std=RESCALE_STD,
            builder=_seed_builder(IDCSeedCNN),
        ),
        ModelSpec(
            name="bn_cnn",
            description="BatchNorm CNN: 4 blocks of 2 convs 32-64-128-256 + global pool (1.2M params, any size)",
            input_size=50,
            target_layer="features.3",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            builder=_seed_builder(BNCNN),
        ),
        ModelSpec(
            name="small_resnet",
            description="Small ResNet: 3x3 stem + 3 stages of 2 basic blocks 32-64-128 (0.7M params, any size)",
            input_size=50,
            target_layer="stages.-1",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            builder=_seed_builder(SmallResNet),
        ),
        _tv("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "layer4.-1", "torchvision ResNet-18"),
        _tv("resnet50", "ResNet50_Weights.IMAGENET1K_V2", "layer4.-1", "torchvision ResNet-50"),
        _tv(
            "densenet121",
            "DenseNet121_Weights.IMAGENET1K_V1",
            "features.norm5",
            "torchvision DenseNet-121",
        ),
        _tv(
            "efficientnet_b0",
            "EfficientNet_B0_Weights.IMAGENET1K_V1",
            "features.-1",
            "torchvision EfficientNet-B0",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def build_model(name: str, pretrained: bool = False) -> tuple[nn.Module, str | None]:
    """Build a registered model with a 2-class head. Returns (model, notice or None)."""
    return get_spec(name).builder(pretrained)


def get_target_layer(model: nn.Module, dotted: str) -> nn.Module:
    """Resolve a dotted path such as 'layer4.-1' or 'features.norm5' to a sub-module."""
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    for part in dotted.split("."):
        try:
            module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
        except (AttributeError, IndexError, TypeError):
            raise ValueError(
                f"Target layer {dotted!r} not found in {type(model).__name__} (at {part!r})"
            ) from None
    return module
