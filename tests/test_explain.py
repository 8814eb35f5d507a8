"""CAM registry × model registry, CAM invariants, thread safety, D4 TTA, overlays, faithfulness."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.checkpoints import LoadedModel, ModelCard, load_checkpoint, save_checkpoint

pytest.importorskip("pytorch_grad_cam", reason="needs grad-cam")

from core.explain import (
    CAM_METHODS,
    COLORMAPS,
    SLOW_METHODS,
    compute_cams,
    energy_in_mask,
    explain_gallery,
    faithfulness_table,
    overlay,
    overlays_zip,
    pointing_hits,
    to_unit_maps,
)
from core.models import MODELS, build_model, get_target_layer
from core.preprocess import predict_proba


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """Factory: an untrained registered model saved and re-loaded through the real checkpoint path."""
    made: dict[tuple[str, int], LoadedModel] = {}

    def make(arch: str, size: int) -> LoadedModel:
        if (arch, size) not in made:
            torch.manual_seed(0)
            model, _ = build_model(arch)
            path = tmp_path_factory.mktemp("ckpt") / f"{arch}_{size}.pt"
            save_checkpoint(path, model, ModelCard.for_model(arch, input_size=size))
            made[arch, size] = load_checkpoint(path)
        return made[arch, size]

    return make


def _images(n: int, h: int = 40, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


DETERMINISM_CHECKED = (
    "hcd_cnn",
    "idc_cnn",
    "resnet18",
)  # the rest only for shape and range: CPU time


@pytest.mark.parametrize("method", list(CAM_METHODS))
@pytest.mark.parametrize("arch", list(MODELS))
def test_every_method_and_model_gives_unit_maps_at_input_size(checkpoint, arch, method):
    slow = method in SLOW_METHODS  # one forward per channel: keep these small
    loaded = checkpoint(arch, 32 if slow else 64)
    images = _images(2 if arch in DETERMINISM_CHECKED and not slow else 1, h=40, w=44)
    result = compute_cams(loaded, images, method, batch_size=512)  # fewer, larger ScoreCAM batches
    assert result.cams.shape == (len(images), 40, 44)  # not the model's size: maps at the input's
    assert result.cams.dtype == np.float32
    assert np.isfinite(result.cams).all()
    assert result.cams.min() >= 0.0 and result.cams.max() <= 1.0
    assert (
        result.probs.shape == (len(images),) and ((result.probs >= 0) & (result.probs <= 1)).all()
    )
    if arch in DETERMINISM_CHECKED and not slow:
        again = compute_cams(loaded, images, method)
        np.testing.assert_array_equal(result.cams, again.cams)


@pytest.mark.parametrize("method", sorted(SLOW_METHODS))
def test_gradient_free_methods_are_deterministic(checkpoint, method):
    loaded = checkpoint("hcd_cnn", 32)
    images = _images(2)
    first = compute_cams(loaded, images, method, batch_size=64)
    assert first.cams.max() > 0  # a real map, not the all-zero constant-map fallback
    np.testing.assert_array_equal(
        first.cams, compute_cams(loaded, images, method, batch_size=64).cams
    )


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_hooks_are_released_and_model_left_untouched(checkpoint):
    loaded = checkpoint("hcd_cnn", 32)
    layer = get_target_layer(loaded.model, loaded.card.target_layer)
    before = _hook_count(loaded.model)
    weights = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    fast = [m for m in CAM_METHODS if m not in SLOW_METHODS]
    calls = [fast[k % len(fast)] for k in range(100)] + sorted(SLOW_METHODS) * 2
    images = _images(1, 32, 32)
    for method in calls:
        compute_cams(loaded, images, method, batch_size=128)
    assert _hook_count(loaded.model) == before == 0
    assert len(layer._forward_hooks) == 0
    assert (
        get_target_layer(loaded.model, loaded.card.target_layer) is layer
    )  # AblationCAM swapped it back
    assert all(p.grad is None for p in loaded.model.parameters())
    assert not loaded.model.training
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, weights[k])


def test_concurrent_calls_on_a_shared_model_match_serial_calls(checkpoint):
    loaded = checkpoint("hcd_cnn", 32)
    jobs = [
        (method, seed)
        for seed in range(2)
        for method in ("gradcam", "layercam", "ablationcam", "eigencam")
    ]
    serial = {
        job: compute_cams(loaded, _images(2, 32, 32, job[1]), job[0], batch_size=128).cams
        for job in jobs
    }
    results, errors = {}, []
    barrier = threading.Barrier(len(jobs))

    def work(job):
        try:
            barrier.wait()
            results[job] = compute_cams(
                loaded, _images(2, 32, 32, job[1]), job[0], batch_size=128
            ).cams
        except Exception as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for job in jobs:
        np.testing.assert_array_equal(results[job], serial[job], err_msg=str(job))


def test_targets_and_probabilities_follow_the_card(checkpoint):
    loaded = checkpoint("resnet18", 64)
    images = _images(4, 64, 64)
    pred = compute_cams(loaded, images, "gradcam", target="pred")
    reference = predict_proba(loaded, images, precision="fp32")  # compute_cams runs in fp32
    np.testing.assert_allclose(pred.probs, reference, atol=1e-5)
    np.testing.assert_array_equal(pred.classes, (pred.probs >= loaded.card.threshold).astype(int))
    tumour = compute_cams(loaded, images, "gradcam", target="tumour")
    normal = compute_cams(loaded, images, "gradcam", target="normal")
    assert (tumour.classes == 1).all() and (normal.classes == 0).all()
    assert not np.allclose(tumour.cams, normal.cams)
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_cams(loaded, images, "nope")
    with pytest.raises(ValueError, match="unknown target"):
        compute_cams(loaded, images, "gradcam", target="cancer")


class RedSpotNet(nn.Module):
    """Logit(tumour) = max over pixels of the red channel. GradCAM on ``features`` is then the red
    channel itself, wherever it is: an orientation-equivariant CAM for checking TTA's inverses."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1, bias=False)
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))

    def forward(self, x):
        return self.head(self.features(x).amax(dim=(2, 3)))


def _red_spot_model() -> LoadedModel:
    card = ModelCard(
        arch="red_spot", input_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, target_layer="features"
    )
    return LoadedModel(model=RedSpotNet().eval(), card=card, path=Path("red_spot.pt"), sha256="")


def _l_shape_image() -> np.ndarray:
    image = np.zeros((32, 32, 3), np.uint8)
    image[2:12, 3:6, 0] = 255  # an L in the top-left corner: no D4 symmetry
    image[9:12, 3:14, 0] = 255
    image[20:24, 25:29, 0] = 120  # a dimmer spot elsewhere
    return image


def test_d4_tta_undoes_each_transform():
    loaded = _red_spot_model()
    image = _l_shape_image()
    plain = compute_cams(loaded, image, "gradcam", target="tumour").cams[0]
    np.testing.assert_allclose(
        plain, image[..., 0] / 255.0, atol=1e-5
    )  # the map is the red channel
    tta = compute_cams(loaded, image, "gradcam", target="tumour", tta=True).cams[0]
    np.testing.assert_allclose(tta, plain, atol=1e-5)


def test_aug_smooth_and_eigen_smooth_options():
    loaded = _red_spot_model()
    image = _l_shape_image()
    plain = compute_cams(loaded, image, "gradcam", target="tumour").cams[0]
    smooth = compute_cams(loaded, image, "gradcam", target="tumour", aug_smooth=True).cams[0]
    np.testing.assert_allclose(
        smooth, plain, atol=1e-5
    )  # flips undone, brightness scaling normalised away
    eigen = compute_cams(loaded, image, "gradcam", target="tumour", eigen_smooth=True)
    assert eigen.cams.shape == (1, 32, 32) and 0 <= eigen.cams.min() and eigen.cams.max() <= 1


def test_unit_maps_guard_constant_and_nan():
    maps = np.stack([np.full((4, 4), 3.0), np.full((4, 4), np.nan), np.arange(16.0).reshape(4, 4)])
    out = to_unit_maps(maps, (8, 6))
    assert out.shape == (3, 8, 6) and np.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1] == 0).all()
    assert out[2].min() == 0 and out[2].max() == pytest.approx(1.0)


def test_overlay():
    image = _images(1, 32, 32)[0]
    image[0, 0] = 255
    cam = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    np.testing.assert_array_equal(overlay(image, cam, alpha=0.0), image)
    pictures = {name: overlay(image, cam, alpha=0.6, colormap=name) for name in COLORMAPS}
    assert all(p.shape == (32, 32, 3) and p.dtype == np.uint8 for p in pictures.values())
    assert not np.array_equal(pictures["jet"], pictures["viridis"])
    assert not np.array_equal(overlay(image, cam, alpha=0.3), overlay(image, cam, alpha=0.7))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, cam, alpha=1.5)


def test_pointing_game_and_energy():
    cams = np.zeros((3, 4, 4), np.float32)
    cams[0, 0, 0] = 1.0  # peak inside
    cams[1, 3, 3] = 1.0  # peak outside
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2, :2] = True
    np.testing.assert_array_equal(
        pointing_hits(cams, masks), [True, False, True]
    )  # all-zero map points at (0, 0)
    cams[1, 0, 1] = 1.0
    np.testing.assert_allclose(energy_in_mask(cams, masks), [1.0, 0.5, 0.0])


def test_gallery_and_zip_export(checkpoint):
    models = {"a": checkpoint("hcd_cnn", 32), "b": checkpoint("idc_cnn", 32)}
    images = _images(3, 32, 32)
    gallery = explain_gallery(models, images, ["p/1", "p 2", "p3"], ["gradcam", "eigencam"])
    assert [(c.model, c.method) for c in gallery.columns] == [
        ("a", "gradcam"),
        ("a", "eigencam"),
        ("b", "gradcam"),
        ("b", "eigencam"),
    ]
    grid = gallery.overlays(alpha=0.5, colormap="turbo")
    assert len(grid) == 3 and all(len(row) == 4 for row in grid)
    with zipfile.ZipFile(io.BytesIO(overlays_zip(gallery, 0.5, "turbo"))) as zf:
        names = zf.namelist()
        assert len(names) == 3 * (4 + 1) and "p_1__a__gradcam.png" in names
        decoded = np.asarray(Image.open(io.BytesIO(zf.read("p3__b__eigencam.png"))))
    np.testing.assert_array_equal(decoded, grid[2][3])


def test_zip_export_keeps_every_overlay_under_its_own_name(checkpoint):
    """gradcam and gradcam++ (and patches whose names differ only in unsafe characters) were
    written under one name, so the zip held fewer overlays than the page showed."""
    models = {"m": checkpoint("hcd_cnn", 32), "m/2": checkpoint("idc_cnn", 32)}
    images = _images(3, 32, 32)
    gallery = explain_gallery(models, images, ["a/b", "a_b", "c"], ["gradcam", "gradcam++"])
    grid = gallery.overlays()
    with zipfile.ZipFile(io.BytesIO(overlays_zip(gallery))) as zf:
        names = zf.namelist()
        assert len(names) == len(set(names)) == 3 * (4 + 1)
        assert "c__m__gradcamplusplus.png" in names and "c__m__gradcam.png" in names
        for k, column in enumerate(gallery.columns):  # the second "a/b"-like patch is "~2"
            entry = (
                f"a_b__{column.model.replace('/', '_')}__{column.method.replace('+', 'plus')}~2.png"
            )
            decoded = np.asarray(Image.open(io.BytesIO(zf.read(entry))))
            np.testing.assert_array_equal(decoded, grid[1][k])


def test_faithfulness_table_ranks_methods(checkpoint):
    models = {"cnn": checkpoint("hcd_cnn", 32)}
    images = _images(2, 32, 32)
    masks = np.zeros((2, 32, 32), bool)
    masks[:, 8:24, 8:24] = True
    table = faithfulness_table(
        models, images, ["gradcam", "eigencam", "layercam"], masks=masks, percentiles=(30, 70)
    )
    assert list(table["method"]) != [] and set(table["method"]) == {
        "gradcam",
        "eigencam",
        "layercam",
    }
    for column in (
        "road_morf",
        "road_lerf",
        "road_combined",
        "pointing_hit_rate",
        "energy_in_mask",
        "rank",
    ):
        assert table[column].notna().all(), column
    assert table["random_point_rate"].iloc[0] == pytest.approx(0.25)
    assert table["rank"].min() == 1 and table["rank"].is_monotonic_increasing
    np.testing.assert_allclose(
        (table["road_lerf"] - table["road_morf"]) / 2, table["road_combined"], atol=1e-6
    )  # combined is the mean of per-image combined scores, equal to the difference of means
    again = faithfulness_table(
        models, images, ["gradcam", "eigencam", "layercam"], masks=masks, percentiles=(30, 70)
    )
    assert table.equals(again)
