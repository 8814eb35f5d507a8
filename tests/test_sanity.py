"""Can I trust this map? The randomisation sanity checks (core.sanity): stages, randomisation,
similarity (SSIM against scikit-image), verdicts, controls, localisation, agreement, cache."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_checkpoint, quick, train_demo_checkpoint

from core import sanity
from core.checkpoints import load_checkpoint
from core.data import open_dataset
from core.errors import InputError
from core.loaders import BatchReader
from core.models import MODELS, build_model, get_target_layer
from core.train_config import TrainConfig

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from ssim_reference import PAIRS, reference_maps  # noqa: E402

REFERENCE = json.loads((Path(__file__).parent / "reference" / "ssim_reference.json").read_text())


@pytest.fixture(scope="session")
def demo_loaded(demo_root, tmp_path_factory):
    path = train_demo_checkpoint(demo_root, tmp_path_factory.getbasetemp() / "sanity_demo_run")
    return load_checkpoint(path)


@pytest.fixture(scope="session")
def demo_sample(demo_root):
    ds = open_dataset(demo_root / "pcam")
    return sanity.dataset_sample(ds, sanity.pick_indices(ds, "test", 16))


def first(sample: sanity.SanitySample, k: int) -> sanity.SanitySample:
    def cut(a):
        return None if a is None else a[:k]

    return replace(
        sample,
        images=sample.images[:k],
        labels=sample.labels[:k],
        masks=cut(sample.masks),
        has_mask=cut(sample.has_mask),
        key=f"{sample.key}|first {k}",
    )


# --- stages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_registered_model_has_stages_holding_each_parameter_once(arch):
    model, _ = build_model(arch)
    plan = sanity.stage_plan(model, arch)
    assert plan.cascading and plan.note is None
    assert plan.stages[0].name == "head" and len(plan.stages) >= 4
    head = get_target_layer(model, MODELS[arch].classifier)
    head_params = {
        id(p) for path in plan.stages[0].modules for p in get_target_layer(model, path).parameters()
    }
    assert {id(p) for p in head.parameters()} <= head_params
    # the CAM layer sits below the head, so randomising the head alone leaves its activations
    layer = get_target_layer(model, MODELS[arch].target_layer)
    assert not {id(p) for p in layer.parameters()} & head_params


def test_an_unknown_layout_falls_back_to_independent_per_module_randomisation(checkpoint_path):
    loaded = load_checkpoint(checkpoint_path)
    plan = sanity.stage_plan(loaded.model, "someone_elses_net")
    assert not plan.cascading and "stage layout unknown" in plan.note
    owned = [m for m in loaded.model.modules() if any(True for _ in m.parameters(recurse=False))]
    assert len(plan.stages) == len(owned)
    # a registered arch whose stages do not resolve is treated the same way
    broken = replace(MODELS["idc_cnn"], stages=(sanity.Stage("head", ("nothing.here",)),))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sanity, "MODELS", dict(MODELS, idc_cnn=broken))
        plan = sanity.stage_plan(loaded.model, "idc_cnn")
        assert not plan.cascading and "no module 'nothing.here'" in plan.note
        images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), np.uint8)
        sample = sanity.upload_sample(images, "fallback")
        report = sanity.sanity_check(loaded, sample, ("gradcam",), seeds=(0,), use_cache=False)
    assert set(report.curves["mode"]) == {"—", "independent"}
    assert any("stage layout unknown" in n for n in report.notes)
    assert set(report.verdicts["verdict"]) == {"not run (no cascading order)"}


@pytest.fixture
def checkpoint_path(tmp_path):
    return make_checkpoint(tmp_path / "idc.pt", arch="idc_cnn", input_size=48)


# --- randomisation ---------------------------------------------------------------------------


def test_randomising_changes_every_parameter_of_the_chosen_stages_and_nothing_else(demo_loaded):
    trained = sanity.private_copy(demo_loaded)
    plan = sanity.stage_plan(trained.model, trained.card.arch)
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    x = torch.rand(4, 3, 96, 96)
    for mode in sanity.MODES:
        for depth, model in enumerate(sanity.randomised_models(trained.model, plan, mode, 0, x), 1):
            drawn = plan.stages[:depth] if mode == "cascading" else plan.stages[depth - 1 : depth]
            drawn_keys = {
                f"{path}.{k}" if path else k
                for stage in drawn
                for path in stage.modules
                for k in get_target_layer(model, path).state_dict()
            }
            for key, value in model.state_dict().items():
                if key.endswith("num_batches_tracked"):
                    continue
                if key in drawn_keys:  # every element re-drawn (BN statistics re-measured)
                    assert (value != before[key]).all(), (mode, depth, key)
                else:
                    assert torch.equal(value, before[key]), (mode, depth, key)
    for key, value in trained.model.state_dict().items():
        assert torch.equal(value, before[key])  # the copies were copies


def test_the_cached_model_stays_bit_identical_and_free_of_hooks(demo_loaded, demo_sample):
    before = {k: v.clone() for k, v in demo_loaded.model.state_dict().items()}
    flags = [p.requires_grad for p in demo_loaded.model.parameters()]
    small = first(demo_sample, 4)
    sanity.sanity_check(demo_loaded, small, ("gradcam",), seeds=(0,), use_cache=False)
    after = demo_loaded.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in demo_loaded.model.parameters())
    assert [p.requires_grad for p in demo_loaded.model.parameters()] == flags
    assert not demo_loaded.model.training
    assert not any(m._forward_hooks or m._backward_hooks for m in demo_loaded.model.modules())


def test_randomisation_leaves_torch_global_random_state_alone(demo_loaded):
    trained = sanity.private_copy(demo_loaded)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sanity.randomise_stage(trained.model, sanity.stage_plan(trained.model, "hcd_cnn").stages[0], 7)
    assert torch.equal(torch.rand(3), expected)


# --- similarity ------------------------------------------------------------------------------


def test_ssim_matches_scikit_image_on_the_reference_maps():
    maps = reference_maps()
    for a, b in PAIRS:
        assert sanity.ssim(maps[a], maps[b]) == pytest.approx(
            REFERENCE["ssim"][f"{a}|{b}"], abs=1e-9
        )


def test_ssim_is_two_dimensional():
    maps = reference_maps()
    a, b = maps["asym"], maps["blob_shifted"]
    # a map and its transpose score differently...
    assert sanity.ssim(a, a.T) < 0.8
    # ...and transposing both maps changes nothing (an isotropic 2-D window); an SSIM of the
    # flattened maps (Quantus) slides along rows only, so it would change
    assert sanity.ssim(a.T, b.T) == pytest.approx(sanity.ssim(a, b), abs=1e-12)
    with pytest.raises(ValueError):
        sanity.ssim(a.reshape(-1), b.reshape(-1))  # a flattened map is refused


def test_spearman_reads_absolute_maps_and_constant_maps_have_none():
    rng = np.random.default_rng(0)
    a = rng.random((3, 16, 16))
    b = np.stack([a[0], 1 - a[1], np.zeros((16, 16))])
    rho, ssim_values, constant = sanity.map_similarity(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert np.isnan(rho[2]) and constant.tolist() == [False, False, True]
    assert np.isfinite(ssim_values).all()


def similarities(values: dict[int, list[float]], method="m", seeds=(0, 1)) -> pd.DataFrame:
    """Long similarity rows: depth -> per-patch Spearman values (the same for every seed)."""
    rows = [
        {
            "method": method,
            "mode": "cascading" if depth else "",
            "depth": depth,
            "seed": seed if depth else None,
            "patch": i,
            "spearman": v,
            "ssim": 0.5,
            "constant": bool(np.isnan(v)),
        }
        for depth, vs in values.items()
        for seed in (seeds if depth else (None,))
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_depth_zero_is_never_in_an_average():
    curves = sanity.summarise(
        similarities({0: [1.0] * 4, 1: [0.5] * 4, 2: [0.1] * 4}), {0: "none", 1: "head", 2: "stem"}
    )
    assert sanity.mean_over_depths(curves)["m"] == pytest.approx(0.3)  # (0.5 + 0.1) / 2
    verdict = sanity.verdict_table(curves, n_stages=2).iloc[0]
    assert verdict["end_abs_rho"] == pytest.approx(0.1) and verdict["verdict"] == "passes"
    assert verdict["mean_over_depths"] == pytest.approx(0.3)


def test_constant_maps_are_counted_and_kept_out_of_the_mean():
    curves = sanity.summarise(similarities({1: [0.2, np.nan, 0.4, np.nan]}), {1: "head"})
    row = curves[(curves["metric"] == "abs_spearman")].iloc[0]
    assert row["mean"] == pytest.approx(0.3) and row["n_patches"] == 2
    assert row["n_constant"] == 4 and row["n_maps"] == 8  # two patches × two seeds
    assert sanity._constant_notes(curves) == [
        "m: constant maps (no rank correlation, left out of ρ) in 4/8 pairs at head."
    ]
    every = sanity.summarise(similarities({1: [np.nan] * 3}), {1: "head"})
    verdict = sanity.verdict_table(every, n_stages=1).iloc[0]
    assert verdict["verdict"] == "no verdict (every map constant)"


T = sanity.PASS_MAX_ABS_RHO


def test_the_rule_reads_absolute_rho_so_an_inverted_map_fails():
    inverted = sanity.summarise(similarities({1: [-0.9, -0.8, -0.85, -0.95]}), {1: "stem"})
    assert sanity.verdict_table(inverted, n_stages=1).iloc[0]["verdict"] == "fails"
    straddling = [T - 0.3, T + 0.1, T - 0.2, T + 0.05]
    uncertain = sanity.summarise(similarities({1: straddling}), {1: "stem"})
    assert sanity.verdict_table(uncertain, n_stages=1).iloc[0]["verdict"] == "uncertain"


def test_the_interval_holds_the_spread_between_seeds():
    frame = similarities({1: [0.1, 0.12, 0.08, 0.1]})
    steady = sanity.summarise(frame, {1: "stem"})
    frame.loc[frame["seed"] == 1, "spearman"] = T + 0.05  # seed 1 above the threshold
    shaky = sanity.summarise(frame, {1: "stem"})
    assert shaky.iloc[0]["seed_min"] == pytest.approx(0.1)
    assert shaky.iloc[0]["seed_max"] == pytest.approx(T + 0.05)
    # a resample that draws seed 1 twice reaches its mean: the interval spans both seeds
    assert steady.iloc[0]["high"] < 0.15 and shaky.iloc[0]["high"] == pytest.approx(T + 0.05)
    assert sanity.verdict_table(steady, 1).iloc[0]["verdict"] == "passes"
    assert sanity.verdict_table(shaky, 1).iloc[0]["verdict"] == "uncertain"


# --- controls and the end-to-end verdicts on a trained demo checkpoint ------------------------


def test_the_random_control_has_a_fixed_seed(demo_loaded, demo_sample):
    trained = sanity.private_copy(demo_loaded)
    images, classes = demo_sample.images[:4], np.ones(4, int)
    first = sanity.random_cam_explainer(0)(trained, images, classes)
    assert np.array_equal(first, sanity.random_cam_explainer(0)(trained, images, classes))
    assert not np.array_equal(first, sanity.random_cam_explainer(1)(trained, images, classes))


def grey_level(loaded, images, classes):
    """An 'explainer' that ignores the model: the patch's darkness."""
    return sanity.to_unit_maps(255.0 - images.mean(axis=3), images.shape[1:3])


def test_an_explainer_that_ignores_the_model_fails_and_gradcam_passes(demo_loaded, demo_sample):
    trained = sanity.private_copy(demo_loaded)
    classes = np.ones(len(demo_sample.images), int)
    explainers = {
        "grey level": grey_level,
        "gradcam": sanity.cam_explainer("gradcam"),
        sanity.EDGE_CONTROL: sanity.edge_explainer,
        sanity.RANDOM_CONTROL: sanity.random_cam_explainer(0),
    }
    run = sanity.mprt(trained, demo_sample.images, classes, explainers)
    verdicts = sanity.verdict_table(run.curves, len(run.plan.stages)).set_index("method")
    assert verdicts.loc["grey level", "verdict"] == "fails"
    assert verdicts.loc[sanity.EDGE_CONTROL, "verdict"] == "fails"
    assert verdicts.loc["gradcam", "verdict"] == "passes"
    rho = run.curves[run.curves["metric"] == "abs_spearman"].set_index(["method", "depth"])
    # RandomCAM reads the target layer: unchanged while only the head is re-drawn, then gone
    assert rho.loc[(sanity.RANDOM_CONTROL, 1), "mean"] == pytest.approx(1.0)
    assert rho.loc[(sanity.RANDOM_CONTROL, len(run.plan.stages)), "mean"] < 0.4
    assert (rho.xs(0, level="depth")["mean"] == 1.0).all()  # deterministic: depth 0 is 1


def test_eigencam_is_flagged_for_ignoring_the_head(demo_loaded, demo_sample):
    small = first(demo_sample, 6)
    report = sanity.sanity_check(demo_loaded, small, ("eigencam", "gradcam"), seeds=(0,))
    notes = report.verdicts.set_index("method")["note"]
    assert "ignores the class scores" in notes["eigencam"]
    assert notes["gradcam"] == ""
    assert report.example_trained.shape == report.example_randomised.shape == (4, 4, 96, 96)


# --- localisation and agreement --------------------------------------------------------------


def test_centre_region_is_pcams_32_pixel_centre():
    region = sanity.centre_region((96, 96))
    assert region.sum() == 32 * 32 and region[32:64, 32:64].all()
    uniform = np.ones((2, 96, 96), np.float32)
    assert sanity.centre_scores(uniform)["centre_mass"] == pytest.approx(
        sanity.UNIFORM_CENTRE_SHARE
    )
    peaked = np.zeros((1, 96, 96), np.float32)
    peaked[0, 47, 50] = 1.0
    assert sanity.centre_scores(peaked) == {"centre_mass": 1.0, "centre_pointing": 1.0}


def test_localisation_is_scored_on_pcam_and_declined_on_idc(demo_loaded, demo_sample, demo_root):
    small = first(demo_sample, 6)
    report = sanity.sanity_check(demo_loaded, small, ("gradcam", "layercam"), seeds=(0,))
    assert {"centre_mass", "centre_pointing", "energy_in_mask"} <= set(report.scores)
    idc = replace(small, data_format="idc", masks=None, has_mask=None)
    report = sanity.sanity_check(demo_loaded, idc, ("gradcam",), seeds=(0,), use_cache=False)
    assert "centre_mass" not in report.scores
    assert any("IDC labels whole patches" in n for n in report.notes)
    normal_only = replace(small, labels=np.zeros(6, int))
    report = sanity.sanity_check(
        demo_loaded, normal_only, ("gradcam",), seeds=(0,), use_cache=False
    )
    assert any("needs tumour patches" in n for n in report.notes)


def test_kendall_tau_between_score_rankings_and_the_disagreement_warning():
    scores = pd.DataFrame(
        {
            "method": ["a", "b", "c", "d"],
            "road_combined": [0.4, 0.3, 0.2, 0.1],
            "centre_mass": [0.9, 0.8, 0.7, 0.6],
            "centre_pointing": [0.1, 0.2, 0.3, 0.4],
        }
    )
    table = sanity.score_agreement(scores).set_index(["score_a", "score_b"])["kendall_tau"]
    assert table[("road_combined", "centre_mass")] == pytest.approx(1.0)
    assert table[("road_combined", "centre_pointing")] == pytest.approx(-1.0)
    report = sanity.SanityReport(
        "m", *[pd.DataFrame()] * 3, sanity.score_agreement(scores), (), *[None] * 3
    )
    assert report.disagreement
    assert sanity.score_agreement(scores.iloc[:2]).empty  # two methods: no ranking to compare


# --- cache, limits, errors -------------------------------------------------------------------


def test_a_second_check_is_served_from_disk(demo_loaded, demo_sample, monkeypatch):
    small = first(demo_sample, 4)
    computed = sanity.sanity_check(demo_loaded, small, ("gradcam",), seeds=(0,))
    path = sanity.cache_path(
        demo_loaded, small, ("gradcam",), ("cascading",), (0,), "tumour", False
    )
    assert path.is_file()

    def no_cam(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sanity, "compute_cams", no_cam)
    again = sanity.sanity_check(demo_loaded, small, ("gradcam",), seeds=(0,), label="renamed")
    assert again.model == "renamed"
    for name in sanity.TABLES:
        pd.testing.assert_frame_equal(getattr(again, name), getattr(computed, name))
    assert np.array_equal(again.example_randomised, computed.example_randomised)
    with pytest.raises(AssertionError, match="recomputed"):  # other seeds: another key
        sanity.sanity_check(demo_loaded, small, ("gradcam",), seeds=(1,))
    path.write_bytes(b"damaged")
    monkeypatch.undo()
    assert sanity.read_report(path) is None


def test_bad_requests_are_one_line(demo_loaded, demo_sample, monkeypatch):
    def refused(**kwargs):
        with pytest.raises(InputError) as info:
            sanity.sanity_check(demo_loaded, **{"sample": demo_sample, **kwargs})
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "unknown CAM method" in refused(methods=("gradcam", "nope"))
    assert "cascading, independent" in refused(modes=("sideways",))
    assert "seeds" in refused(seeds=())
    assert "2 to 64 patches" in refused(sample=first(demo_sample, 1))
    monkeypatch.setenv("HISTOLENS_PUBLIC", "1")
    many = replace(demo_sample, images=np.concatenate([demo_sample.images] * 2))
    assert "2 to 16 patches on this public server" in refused(sample=many)


# --- data randomisation ----------------------------------------------------------------------


def test_shuffled_labels_keep_the_counts_and_break_the_pairing(demo_root):
    ds = open_dataset(demo_root / "pcam")
    indices = ds.indices(split="train")
    plain, shuffled = BatchReader(ds, indices), BatchReader(ds, indices, shuffle_seed=0)
    assert np.bincount(plain.labels).tolist() == np.bincount(shuffled.labels).tolist()
    assert (plain.labels != shuffled.labels).mean() > 0.3
    assert np.array_equal(shuffled.labels, BatchReader(ds, indices, shuffle_seed=0).labels)


def test_shuffle_labels_round_trips_through_the_command_line(tmp_path):
    from core import jobs
    from core.__main__ import build_parser
    from core.commands.train import config_from_args

    cfg = TrainConfig(data="/data/x", shuffle_labels=True)
    argv = ["train", *jobs.config_to_argv(asdict(cfg)), "--out", str(tmp_path)]
    assert "--shuffle-labels" in argv
    assert config_from_args(build_parser().parse_args(argv)) == cfg


def test_a_shuffled_label_run_trains_on_shuffled_labels_and_says_so(
    demo_root, tmp_path, monkeypatch
):
    from core import train
    from core.checkpoints import read_card

    readers = []

    class Spy(BatchReader):
        def __init__(self, ds, indices, shuffle_seed=None):
            super().__init__(ds, indices, shuffle_seed)
            readers.append(shuffle_seed)

    monkeypatch.setattr(train, "BatchReader", Spy)
    run = tmp_path / "run"
    train.fit(quick(demo_root / "idc", shuffle_labels=True, limit_batches=2, seed=5), run)
    assert readers == [5, None]  # training labels shuffled with the run's seed, validation kept
    card = read_card(run / "best.pt")
    assert card.train_config["shuffle_labels"] is True
    assert sanity.shuffled_label_config(card) is None  # a twin has no twin of its own


def test_the_shuffled_label_twin_is_found_by_its_recipe(tmp_path, checkpoint_path):
    from core import run_folder
    from core.checkpoints import ModelCard

    recipe = asdict(TrainConfig(data="/data/idc", model="idc_cnn", seed=3, img_size=48))
    card = ModelCard.for_model("idc_cnn", train_config=recipe)
    assert sanity.shuffled_label_run(card, tmp_path) is None
    assert sanity.shuffled_label_config(ModelCard.for_model("idc_cnn")) is None  # no recipe
    other = run_folder.make_run_dir("idc_cnn-other", tmp_path)
    run_folder.write_config(other, {**recipe, "shuffle_labels": True, "seed": 4})
    run_folder.write_status(other, state="finished")
    (other / "best.pt").write_bytes(checkpoint_path.read_bytes())
    assert sanity.shuffled_label_run(card, tmp_path) is None  # another seed is another recipe
    twin = run_folder.make_run_dir("idc_cnn-shuffled-labels", tmp_path)
    run_folder.write_config(twin, {**recipe, "shuffle_labels": True, "workers": 2})
    run_folder.write_status(twin, state="finished")
    (twin / "best.pt").write_bytes(checkpoint_path.read_bytes())
    assert sanity.shuffled_label_run(card, tmp_path).path == twin


def test_data_randomisation_compares_the_twins_maps(demo_loaded, demo_sample, tmp_path):
    twin = load_checkpoint(make_checkpoint(tmp_path / "twin.pt", arch="hcd_cnn"))
    table = sanity.data_randomisation(demo_loaded, twin, demo_sample, ("gradcam",))
    rho = table[table["metric"] == "abs_spearman"].set_index("method")
    assert rho.loc[sanity.EDGE_CONTROL, "mean"] == pytest.approx(1.0)
    assert rho.loc[sanity.EDGE_CONTROL, "verdict"] == "fails"
    assert set(table["stage"]) == {"model trained on shuffled labels"}
    other = load_checkpoint(make_checkpoint(tmp_path / "other.pt", arch="idc_cnn"))
    with pytest.raises(InputError, match="same architecture"):
        sanity.data_randomisation(demo_loaded, other, demo_sample, ("gradcam",))


# --- command line ----------------------------------------------------------------------------


def test_the_sanity_command_prints_curves_verdicts_and_json(demo_loaded, demo_root, capsys):
    from core.__main__ import main

    argv = ["sanity", "--checkpoint", str(demo_loaded.path), "--data", str(demo_root / "pcam")]
    quick = [*argv, "--methods", "gradcam", "eigencam", "xgradcam", "--n", "4", "--seeds", "0"]
    assert main(quick) == 0
    text = capsys.readouterr().out
    assert "cascading randomisation" in text and "verdict: passes when" in text
    assert "control: edge (Sobel)" in text and "Data randomisation test not run" in text
    assert main([*quick, "--json"]) == 0  # served from the disk cache
    result = json.loads(capsys.readouterr().out)
    assert result["threshold_abs_rho"] == sanity.PASS_MAX_ABS_RHO
    verdicts = {row["method"]: row["verdict"] for row in result["verdicts"]}
    assert verdicts[sanity.EDGE_CONTROL] == "fails" and set(verdicts) >= {"gradcam", "eigencam"}
    assert {row["score_a"] for row in result["agreement"]}  # three methods: τ is computed
    assert result["data_randomisation"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "gradcam", "nope"], "unknown CAM method"),
        (["--n", "1"], "2 to 64 patches"),
        (["--target", "stroma"], "unknown target"),
        (["--sample-seed", "-1"], "--sample-seed"),
    ],
)
def test_the_sanity_command_refuses_bad_input_in_one_line(
    demo_loaded, demo_root, capsys, extra, message
):
    from core.__main__ import main

    argv = ["sanity", "--checkpoint", str(demo_loaded.path), "--data", str(demo_root / "pcam")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
