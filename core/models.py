"""Model registry: name -> builder, default input size, Grad-CAM target layer, preprocessing.

The registry feeds the UI's select boxes and the parametrized tests. Every model returns logits
of shape (N, 2); class 1 is tumour. Pretrained ImageNet weights are used only when they already
sit in the local torch hub cache: nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InputError

if TYPE_CHECKING:  # importing this registry stays torch-free (the Training page lists it)
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESCALE_MEAN = (0.0, 0.0, 0.0)  # the Keras seeds only rescale to [0, 1]
RESCALE_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Stage:
    """One block of layers that the randomisation sanity check (core.sanity) re-draws together."""

    name: str  # shown on the plots, e.g. "head", "layer4", "stem"
    modules: tuple[str, ...]  # dotted paths (as target_layer) whose parameters belong to it


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    input_size: int  # default side length in pixels; the card records what was trained
    target_layer: str  # dotted path for Grad-CAM, e.g. "layer4.-1"
    classifier: str  # dotted path of the final Linear (2 logits), as timm's cfg "classifier"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: Callable[[bool], tuple[nn.Module, str | None]]  # pretrained -> (model, notice)
    torchvision_weights: str | None = None  # e.g. "ResNet18_Weights.IMAGENET1K_V1"
    # The architecture's stages from the head down to the stem; together they hold every
    # parameter (tests/test_sanity.py checks that for every entry). Empty: layout unknown.
    stages: tuple[Stage, ...] = ()


def _seed_builder(class_name: str) -> Callable[[bool], tuple[nn.Module, str | None]]:
    """Builder of a model defined in core.small_cnns (no pretrained weights exist for it)."""

    def build(pretrained: bool) -> tuple[nn.Module, str | None]:
        from core import small_cnns  # torch: only when a model is built

        notice = (
            f"{class_name} has no pretrained weights; training from scratch."
            if pretrained
            else None
        )
        return getattr(small_cnns, class_name)(), notice

    return build


def cached_weights_path(weights_name: str) -> Path:
    """Where torch.hub keeps the file for a torchvision weights enum, e.g. 'ResNet18_Weights.IMAGENET1K_V1'."""
    import torch
    import torchvision.models as tvm

    enum_name, member = weights_name.split(".")
    url = getattr(getattr(tvm, enum_name), member).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _two_class_head(model: nn.Module, classifier: str) -> nn.Module:
    """Swap the ImageNet Linear at ``classifier`` (e.g. "fc", "classifier.-1") for 2 logits."""
    from torch import nn

    parent_path, _, last = classifier.rpartition(".")
    parent = get_target_layer(model, parent_path) if parent_path else model
    old = get_target_layer(model, classifier)
    new = nn.Linear(old.in_features, 2)
    if last.lstrip("-").isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)
    return model


def _torchvision_builder(
    name: str, weights_name: str, classifier: str
) -> Callable[[bool], tuple[nn.Module, str | None]]:
    def build(pretrained: bool) -> tuple[nn.Module, str | None]:
        import torch
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
        return _two_class_head(model, classifier), notice

    return build


def _head_then_blocks(
    head: str, container: str, n_blocks: int, label: str, stem: tuple[str, ...] = ()
) -> tuple[Stage, ...]:
    """Stages of a net built as ``container.0 .. container.{n-1}`` under a head (+ a stem)."""
    blocks = tuple(
        Stage(f"{label} {i + 1}", (f"{container}.{i}",)) for i in reversed(range(n_blocks))
    )
    return (Stage("head", (head,)), *blocks, *((Stage("stem", stem),) if stem else ()))


RESNET_STAGES = (
    Stage("head", ("fc",)),
    *(Stage(f"layer{i}", (f"layer{i}",)) for i in (4, 3, 2, 1)),
    Stage("stem", ("conv1", "bn1")),
)
DENSENET_STAGES = (
    Stage("head", ("classifier",)),
    Stage("denseblock4", ("features.denseblock4", "features.norm5")),
    *(
        Stage(f"denseblock{i}", (f"features.denseblock{i}", f"features.transition{i}"))
        for i in (3, 2, 1)
    ),
    Stage("stem", ("features.conv0", "features.norm0")),
)
# features.0 is the stem conv, 1..7 the MBConv stages, 8 the final 1×1 conv (the CAM layer)
EFFICIENTNET_STAGES = (
    Stage("head", ("classifier",)),
    *(Stage(f"features.{i}", (f"features.{i}",)) for i in range(8, 0, -1)),
    Stage("stem", ("features.0",)),
)


def _tv(
    name: str,
    weights: str,
    target_layer: str,
    classifier: str,
    description: str,
    stages: tuple[Stage, ...],
) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=description,
        input_size=96,
        target_layer=target_layer,
        classifier=classifier,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        builder=_torchvision_builder(name, weights, classifier),
        torchvision_weights=weights,
        stages=stages,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="hcd_cnn",
            description="Kaggle HCD seed CNN: 3 conv blocks 32/64/128 + dense 128 (2.45M params, 96 px)",
            input_size=96,
            target_layer="features.2.2",
            classifier="classifier.-1",
            mean=RESCALE_MEAN,
            std=RESCALE_STD,
            builder=_seed_builder("HCDSeedCNN"),
            stages=_head_then_blocks("classifier", "features", 3, "block"),
        ),
        ModelSpec(
            name="idc_cnn",
            description="IDC seed CNN: 6 convs 32-32-64-64-128-128 + dense 128 (50 px)",
            input_size=50,
            target_layer="features.2.5",
            classifier="classifier.-1",
            mean=RESCALE_MEAN,
            std=RESCALE_STD,
            builder=_seed_builder("IDCSeedCNN"),
            stages=_head_then_blocks("classifier", "features", 3, "block"),
        ),
        ModelSpec(
            name="bn_cnn",
            description="BatchNorm CNN: 4 blocks of 2 convs 32-64-128-256 + global pool (1.2M params, any size)",
            input_size=50,
            target_layer="features.3",
            classifier="classifier.-1",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            builder=_seed_builder("BNCNN"),
            stages=_head_then_blocks("classifier", "features", 4, "block"),
        ),
        ModelSpec(
            name="small_resnet",
            description="Small ResNet: 3x3 stem + 3 stages of 2 basic blocks 32-64-128 (0.7M params, any size)",
            input_size=50,
            target_layer="stages.-1",
            classifier="head.-1",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            builder=_seed_builder("SmallResNet"),
            stages=_head_then_blocks("head", "stages", 3, "stage", stem=("stem",)),
        ),
        _tv(
            "resnet18",
            "ResNet18_Weights.IMAGENET1K_V1",
            "layer4.-1",
            "fc",
            "torchvision ResNet-18",
            RESNET_STAGES,
        ),
        _tv(
            "resnet34",
            "ResNet34_Weights.IMAGENET1K_V1",
            "layer4.-1",
            "fc",
            "torchvision ResNet-34",
            RESNET_STAGES,
        ),
        _tv(
            "resnet50",
            "ResNet50_Weights.IMAGENET1K_V2",
            "layer4.-1",
            "fc",
            "torchvision ResNet-50",
            RESNET_STAGES,
        ),
        _tv(
            "resnet101",
            "ResNet101_Weights.IMAGENET1K_V2",
            "layer4.-1",
            "fc",
            "torchvision ResNet-101",
            RESNET_STAGES,
        ),
        _tv(
            "densenet121",
            "DenseNet121_Weights.IMAGENET1K_V1",
            "features.norm5",
            "classifier",
            "torchvision DenseNet-121",
            DENSENET_STAGES,
        ),
        _tv(
            "densenet169",
            "DenseNet169_Weights.IMAGENET1K_V1",
            "features.norm5",
            "classifier",
            "torchvision DenseNet-169",
            DENSENET_STAGES,
        ),
        _tv(
            "efficientnet_b0",
            "EfficientNet_B0_Weights.IMAGENET1K_V1",
            "features.-1",
            "classifier.-1",
            "torchvision EfficientNet-B0",
            EFFICIENTNET_STAGES,
        ),
        _tv(
            "efficientnet_b1",
            "EfficientNet_B1_Weights.IMAGENET1K_V2",
            "features.-1",
            "classifier.-1",
            "torchvision EfficientNet-B1",
            EFFICIENTNET_STAGES,
        ),
        _tv(
            "efficientnet_b2",
            "EfficientNet_B2_Weights.IMAGENET1K_V1",
            "features.-1",
            "classifier.-1",
            "torchvision EfficientNet-B2",
            EFFICIENTNET_STAGES,
        ),
        _tv(
            "efficientnet_b3",
            "EfficientNet_B3_Weights.IMAGENET1K_V1",
            "features.-1",
            "classifier.-1",
            "torchvision EfficientNet-B3",
            EFFICIENTNET_STAGES,
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
            raise InputError(
                f"Target layer {dotted!r} not found in {type(model).__name__} (at {part!r})"
            ) from None
    return module
