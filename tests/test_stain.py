"""core.stain on generated patches: torchstain's numbers, a known stain recovered, patches with no
tissue passed through (where raw torchstain crashes), seeded per-patch shifts."""

from __future__ import annotations

import numpy as np
import pytest

from core import stain
from core.errors import InputError

torchstain = pytest.importorskip("torchstain")

# H&E stain vectors (optical density per RGB channel, unit length), H first: torchstain's
# reference, and another lab's (bluer hematoxylin, pinker eosin).
KNOWN = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
KNOWN = KNOWN / np.linalg.norm(KNOWN, axis=1, keepdims=True)
OTHER_LAB = np.array([[0.70, 0.62, 0.36], [0.14, 0.86, 0.49]])
OTHER_LAB = OTHER_LAB / np.linalg.norm(OTHER_LAB, axis=1, keepdims=True)


def he_patches(n=4, side=48, stains=KNOWN, seed=0, background=0.0) -> np.ndarray:
    """Patches made from ``stains`` by Beer–Lambert: per pixel a hematoxylin and an eosin
    concentration, a third of the pixels one stain only (Macenko's extreme angles), a
    ``background`` share of pixels left white."""
    rng = np.random.default_rng(seed)
    pixels = n * side * side
    concentrations = rng.uniform(0.3, 1.5, (2, pixels))
    only = rng.integers(0, 3, pixels)  # 0 both, 1 hematoxylin only, 2 eosin only
    concentrations[1, only == 1] = 0
    concentrations[0, only == 2] = 0
    concentrations[:, rng.uniform(size=pixels) < background] = 0
    image = stain.IO * np.exp(-stains.T @ concentrations)
    return np.clip(image, 0, 255).T.reshape(n, side, side, 3).astype(np.uint8)


def angle_degrees(a, b) -> float:
    cos = np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
    return float(np.degrees(np.arccos(min(cos, 1.0))))


def test_a_known_stain_matrix_is_recovered():
    target = stain.fit_target("macenko", he_patches(background=0.3))
    recovered = np.asarray(target["stain_matrix"])
    for true, found in zip(KNOWN, recovered, strict=True):
        assert angle_degrees(true, found) < 1.0, (true, found)


@pytest.mark.parametrize("method", stain.STAIN_METHODS)
def test_normalise_equals_torchstain_on_tissue(method):
    """Our per-patch rebuild is torchstain's own normalize, pixel for pixel."""
    fit_on, patches = he_patches(seed=1), he_patches(n=3, seed=2, stains=OTHER_LAB)
    target = stain.fit_target(method, fit_on)
    if method == "macenko":
        reference = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        reference.HERef = np.asarray(target["stain_matrix"]).T
        reference.maxCRef = np.asarray(target["max_concentrations"])
        expected = [reference.normalize(p, stains=False)[0] for p in patches]
    else:
        reference = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
        reference.fit(fit_on.reshape(-1, fit_on.shape[2], 3))
        expected = [reference.normalize(p) for p in patches]
    result = stain.normalise(patches, target)
    assert not result.untreated.any()
    np.testing.assert_array_equal(result.images, np.stack(expected))


def nearly_white(n_stained: int, side: int = 48) -> np.ndarray:
    patch = np.full((side, side, 3), 250, np.uint8)
    patch.reshape(-1, 3)[:n_stained] = (120, 60, 150)
    return patch


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, on the way to the crash
def test_raw_torchstain_crashes_on_these_patches():
    """The defect worked around (torchstain #1, #55): white or nearly white input raises."""
    normaliser = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    for patch in (nearly_white(0), nearly_white(1)):
        with pytest.raises((np.linalg.LinAlgError, IndexError, ValueError)):
            normaliser.normalize(patch, stains=False)


@pytest.mark.parametrize("n_stained", [0, 1, 3, 15])
def test_white_and_nearly_white_patches_pass_through_and_are_counted(n_stained):
    patches = np.stack([nearly_white(n_stained), he_patches(n=1)[0]])
    seeds = stain.patch_seeds(["a", "b"])
    for method in stain.STAIN_METHODS:
        result = stain.normalise(patches, stain.fit_target(method, he_patches()))
        assert result.untreated.tolist() == [True, False]
        np.testing.assert_array_equal(result.images[0], patches[0])
    shifted = stain.macenko_augment(patches, 0.3, seeds)
    assert shifted.untreated.tolist() == [True, False]
    np.testing.assert_array_equal(shifted.images[0], patches[0])


def test_a_uniform_tissue_patch_passes_reinhard_through():
    """All pixels alike: Reinhard's spread is 0 (a division by zero, NaN in torchstain)."""
    uniform = np.full((1, 32, 32, 3), (150, 90, 160), np.uint8)
    result = stain.normalise(uniform, stain.fit_target("reinhard", he_patches()))
    assert result.untreated.tolist() == [True]
    np.testing.assert_array_equal(result.images, uniform)


def test_fitting_on_background_is_one_clear_error():
    with pytest.raises(InputError, match="background"):
        stain.fit_target("macenko", np.full((4, 32, 32, 3), 245, np.uint8))


@pytest.mark.parametrize("method", stain.STAIN_METHODS)
def test_a_shifted_then_normalised_patch_is_closer_to_the_original(method):
    original = he_patches(n=6, seed=3, background=0.2)
    seeds = stain.patch_seeds(range(len(original)))
    target = stain.fit_target(method, original)
    for shifted in (
        stain.hed_jitter(original, 0.3, seeds),
        stain.macenko_augment(original, 0.4, seeds).images,
    ):
        restored = stain.normalise(shifted, target).images
        for k in range(len(original)):
            before = np.abs(shifted[k].astype(int) - original[k]).mean()
            after = np.abs(restored[k].astype(int) - original[k]).mean()
            assert after < before, (k, before, after)


def test_shifts_are_seeded_per_patch_and_graded():
    patches = he_patches(n=4, seed=4)
    seeds = stain.patch_seeds(["p0", "p1", "p2", "p3"])
    for shift in (stain.hed_jitter, lambda x, s, k: stain.macenko_augment(x, s, k).images):
        whole = shift(patches, 0.2, seeds)
        alone = shift(patches[2:3], 0.2, seeds[2:3])
        np.testing.assert_array_equal(whole[2], alone[0])  # neighbours change nothing
        assert not np.array_equal(whole[0], whole[1])  # each patch its own draw
        distance = [
            np.abs(shift(patches, s, seeds).astype(int) - patches).mean() for s in (0.1, 0.4)
        ]
        assert distance[0] < distance[1]  # a stronger shift moves the patches further
    np.testing.assert_array_equal(stain.hed_jitter(patches, 0.0, seeds), patches)
    assert not np.array_equal(stain.patch_seeds(["p0"], seed=1), seeds[:1])


def test_hed_jitter_is_the_training_colour_transform():
    """The same uniforms through core.augment's Augmentation give the same pixels."""
    import torch

    from core.augment import Augmentation, recolour

    patches = he_patches(n=3, seed=5)
    seeds = stain.patch_seeds(range(3))
    u = torch.stack([torch.rand(7, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    matrix, offset = Augmentation().colour_transform_of(u)  # training's strength, 0.05
    expected = recolour(torch.from_numpy(patches).reshape(3, -1, 3), matrix, offset)
    np.testing.assert_array_equal(
        stain.hed_jitter(patches, 0.05, seeds), expected.reshape(patches.shape).numpy()
    )


def test_target_problems_name_what_is_wrong():
    good = stain.fit_target("macenko", he_patches())
    assert stain.target_problem({}) is None and stain.target_problem(good) is None
    assert stain.target_problem(stain.fit_target("reinhard", he_patches())) is None
    assert "method" in stain.target_problem({"method": "vahadane"})
    assert "stain_matrix" in stain.target_problem({**good, "stain_matrix": [[1, 2, 3]]})
    assert "above 0" in stain.target_problem({**good, "max_concentrations": [1.0, 0.0]})
    assert "exactly" in stain.target_problem({**good, "extra": 1})
    nan = {**good, "max_concentrations": [float("nan"), 1.0]}
    assert "finite" in stain.target_problem(nan)


# -- a checkpoint that normalises stain ----------------------------------------------------------


@pytest.fixture
def normalising(tmp_path):
    """An untrained idc_cnn whose card carries a Macenko target, and the same without."""
    torch = pytest.importorskip("torch")
    from core.checkpoints import ModelCard, save_checkpoint
    from core.models import build_model

    torch.manual_seed(0)
    model, _ = build_model("idc_cnn")
    target = stain.fit_target("macenko", he_patches(seed=6))
    plain = save_checkpoint(tmp_path / "plain.pt", model, ModelCard.for_model("idc_cnn"))
    card = ModelCard.for_model("idc_cnn", stain_norm=target)
    return save_checkpoint(tmp_path / "normalising.pt", model, card), plain, target


def test_the_card_round_trips_the_normaliser(normalising):
    from core.checkpoints import load_checkpoint, read_card

    path, plain, target = normalising
    assert load_checkpoint(path).card.stain_norm == target == read_card(path).stain_norm
    assert read_card(plain).stain_norm == {}  # older checkpoints: no normalisation


def test_every_consumer_gets_normalised_input_through_the_card(normalising):
    """to_model_input is the one door (evaluation, CAMs, uploads, embeddings, training)."""
    import torch

    from core.checkpoints import load_checkpoint
    from core.preprocess import predict_proba, to_model_input

    path, plain, target = normalising
    patches = he_patches(n=3, side=50, seed=7, stains=OTHER_LAB)
    patches[2] = 250  # background: passed through, not a crash
    with_norm, without = load_checkpoint(path), load_checkpoint(plain)
    normalised = stain.normalise(patches, target).images
    assert not np.array_equal(normalised[:2], patches[:2])
    torch.testing.assert_close(
        to_model_input(patches, with_norm.card), to_model_input(normalised, without.card)
    )
    torch.testing.assert_close(  # a torch batch (training's augmented one) too
        to_model_input(torch.from_numpy(patches), with_norm.card),
        to_model_input(normalised, without.card),
    )
    np.testing.assert_allclose(
        predict_proba(with_norm, patches), predict_proba(without, normalised), atol=1e-6
    )


def test_export_refuses_a_normalising_checkpoint_in_one_line(normalising, tmp_path):
    from core.checkpoints import CheckpointError
    from core.interop import export_torchscript

    path, plain, _ = normalising
    with pytest.raises(CheckpointError, match="normalises stain \\(macenko\\)") as err:
        export_torchscript(path, tmp_path / "out.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "out.pt").exists()
    export_torchscript(plain, tmp_path / "plain_out.pt")  # the same weights without: exported


# -- train --stain-norm ----------------------------------------------------------------------------


def test_training_fits_the_target_on_training_patches_and_sees_normalised_input(
    demo_root, tmp_path
):
    """The card's target is the one fitted on the training split alone; the training loop's
    inputs (augmented batches through Runtime.prepare) are normalised as inference's are."""
    from dataclasses import replace

    import torch
    from helpers import quick

    from core.checkpoints import read_card
    from core.data import open_dataset
    from core.preprocess import to_model_input
    from core.train import Runtime, fit

    ds = open_dataset(demo_root / "idc")
    fit(quick(demo_root / "idc", stain_norm="macenko"), tmp_path / "run")
    card = read_card(tmp_path / "run" / "best.pt")
    expected = stain.fit_on_patches("macenko", ds, ds.indices(split="train"), seed=0)
    assert card.stain_norm == expected and card.train_config["stain_norm"] == "macenko"
    assert stain.fit_on_patches("macenko", ds, ds.indices(split="valid"), seed=0) != expected

    batch = torch.from_numpy(ds.read_batch(ds.indices(split="train")[:8]))
    runtime = Runtime(torch.device("cpu"), card)
    plain = replace(card, stain_norm={})
    normalised = torch.from_numpy(stain.normalise(batch.numpy(), card.stain_norm).images)
    torch.testing.assert_close(runtime.prepare(batch), to_model_input(normalised, plain))


def test_the_option_is_checked_and_reaches_the_config(tmp_path):
    from core.__main__ import build_parser
    from core.commands.train import config_from_args
    from core.train_config import TrainConfig

    args = build_parser().parse_args(
        ["train", "--data", "x", "--out", str(tmp_path), "--stain-norm", "reinhard"]
    )
    assert config_from_args(args).stain_norm == "reinhard"
    assert TrainConfig(data="x").stain_norm == "none"  # older configs: no normalisation
    with pytest.raises(InputError, match="stain_norm"):
        TrainConfig(data="x", stain_norm="vahadane")
