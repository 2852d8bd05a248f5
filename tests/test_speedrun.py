"""End to end: ``python -m experiments.speedrun`` on a tiny generated CIFAR-like dataset.

The default recipe (airbench94_muon: whitened first layer, Muon, alternating flips, multi-crop
TTA) for two seeds and two epochs, airbench94 (by name) for one, then the ablation ladder
for a few rungs; checks the results file, that the whitening filters stay exactly as the data
made them, and that each exported bundle reproduces the reported (TTA) accuracy from the bundle
alone. The same command on 8 fake devices, through the download path, runs in a subprocess.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from device_env import fake_cpu_devices
from tiny_data import tiny_cifar

from experiments import speedrun
from jaxcnn import export
from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--widths", "16,32,32"]  # the recipe's net, narrower: the same code path, less compute


@pytest.fixture
def fake_data(monkeypatch):
    data = (tiny_cifar(256, 0), tiny_cifar(64, 1))
    monkeypatch.setattr(speedrun, "load_data", lambda args: data)
    return data


def _bundle_accuracy(path, data):
    bundle = export.load(path)
    probs = bundle.predict(data.images)
    return bundle, float((probs.argmax(-1) == data.labels).mean())


def test_full_recipe_two_seeds_exports_tta_bundles(tmp_path, fake_data, capsys):
    from jaxcnn.models.airbench import whitening_init

    workdir = tmp_path / "run"
    argv = ["--recipe", "airbench94_muon", "--seeds", "0,1", "--epochs", "2", "--batch-size",
            "64", *SMALL,
            "--eval-split", "fake", "--workdir", str(workdir),
            "--visuals-dir", str(tmp_path / "vis"), "--no-progress"]
    results = speedrun.main(argv)
    out = capsys.readouterr().out
    assert json.loads((workdir / "results.json").read_text()) == results
    summary = results["summary"]
    accs = [results[f"seed{s}"]["accuracy"] for s in (0, 1)]
    assert summary["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert summary["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    assert "2 seed(s)" in out
    train, evaluation = fake_data
    for seed in (0, 1):
        row = results[f"seed{seed}"]
        assert row["tta"] == "flip_translate" and row["epochs"] == 2
        assert row["model"] == "airbench94_muon" and row["recipe"]["flip"] == "alternate"
        assert "muon" in [g.get("optimizer") for g in row["recipe"]["param_groups"]]
        assert row["gflop_per_s"] > 0 and row["train_gflop_per_image"] > 0
        # XLA's count of the step times the steps: 2 epochs of 4 steps of 64 images
        assert row["train_pflop"] * 1e15 == pytest.approx(8 * row["train_gflop_per_step"] * 1e9)
        assert row["train_pflop_50k"] > row["train_pflop"] and row["eval_gflop"] > 0
        # seed 1 reuses seed 0's compiled programs (same shapes, same optimizer)
        assert (row["compile_seconds"] > 0) == (seed == 0) and row["train_seconds"] > 0
        assert row["peak_rss_mib"] >= row["peak_rss_after_fit_mib"] > 0
        assert row["history"] == [None, None]  # --eval-every 0: evaluated after training only
        assert row["model_options"]["widths"] == [16, 32, 32]
        bundle, acc = _bundle_accuracy(workdir / f"seed{seed}" / "bundle", evaluation)
        assert bundle.tta == "flip_translate"
        # The bundle alone reproduces the reported TTA accuracy (up to float noise: 1 image).
        assert acc == pytest.approx(row["accuracy"], abs=1.5 / len(evaluation))
        # The whitening filters are the data's, untouched by training (lr_scale 0).
        fresh = whitening_init({"params": {"whiten": {
            "kernel": np.zeros_like(bundle.variables["params"]["whiten"]["kernel"]),
            "bias": np.zeros_like(bundle.variables["params"]["whiten"]["bias"])}}},
            train.images, None, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        np.testing.assert_array_equal(np.asarray(bundle.variables["params"]["whiten"]["kernel"]),
                                      np.asarray(fresh["params"]["whiten"]["kernel"]))
    assert (tmp_path / "vis" / "training_curves.png").stat().st_size > 0
    # The same command again resumes the finished runs: same accuracy, and the training time
    # reported is the runs' own (from their history), not the few seconds of the resume.
    again = speedrun.main(argv + ["--no-figures"])
    for seed in (0, 1):
        first, second = results[f"seed{seed}"], again[f"seed{seed}"]
        assert second["accuracy"] == first["accuracy"]
        assert second["train_seconds"] == pytest.approx(first["train_seconds"], rel=1e-9)


def test_airbench94_by_name_evaluates_per_epoch_on_request(tmp_path, fake_data):
    # the default is the record recipe, 9 epochs (airbench94's 10 would cost more FLOPs)
    args = speedrun.build_parser().parse_args([])
    assert args.recipe == "airbench94_muon" and speedrun.base_recipe(args, 0).epochs == 9
    results = speedrun.main(["--recipe", "airbench94", "--epochs", "2", "--batch-size", "64",
                             "--eval-every", "1", *SMALL, "--eval-split", "fake",
                             "--workdir", str(tmp_path / "run"), "--no-figures",
                             "--no-progress"])
    row = results["seed0"]
    assert row["model"] == "airbench94" and row["recipe"]["lookahead_every"] == 5
    assert results["summary"]["recipe"] == "airbench94"
    assert all(acc is not None for acc in row["history"]) and len(row["history"]) == 2
    assert export.load(tmp_path / "run" / "seed0" / "bundle").model_name == "airbench94"


def test_flops_of_bfloat16_runs_are_those_of_their_float32_twin(tmp_path, fake_data):
    argv = ["--epochs", "1", "--batch-size", "64", *SMALL, "--eval-split", "fake",
            "--no-figures", "--no-progress"]
    dtypes = ("bfloat16", "bf16-products", "float32")
    rows = [speedrun.main([*argv, "--dtype", dtype, "--workdir", str(tmp_path / dtype)])["seed0"]
            for dtype in dtypes]
    assert [(r["recipe"]["dtype"], r["recipe"]["matmul_precision"]) for r in rows] == [
        ("bfloat16", None), ("float32", "bfloat16"), ("float32", None)]
    for row in rows[:2]:
        assert row["train_gflop_per_step"] == pytest.approx(rows[2]["train_gflop_per_step"])
        assert row["eval_gflop"] == pytest.approx(rows[2]["eval_gflop"], rel=0.02)
    assert rows[1]["eval_gflop"] == pytest.approx(rows[2]["eval_gflop"])  # no casts to count


@pytest.mark.parametrize("platform, kernels, native, want", [
    ("gpu", "lax", False, "bfloat16"),
    ("cpu", "onednn", True, "bf16-products"),
    ("cpu", "onednn", False, "float32"),
    ("cpu", "fast", True, "float32"),
])
def test_auto_dtype_takes_bfloat16_products_only_where_onednn_has_them(monkeypatch, platform,
                                                                        kernels, native, want):
    import jax

    from jaxcnn.ops import backend, onednn

    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    monkeypatch.setattr(backend, "resolve", lambda name=None: kernels)
    monkeypatch.setattr(onednn, "native_bf16", lambda: native)
    assert speedrun.resolve_dtype("auto") == want
    assert speedrun.resolve_dtype("float32") == "float32"
    assert speedrun.dtype_changes("bf16-products") == dict(dtype="float32",
                                                           matmul_precision="bfloat16")


def test_device_check_times_the_recipe_on_synthetic_data_without_a_dataset(tmp_path, capsys,
                                                                           monkeypatch):
    def no_data(args):
        raise AssertionError("--device-check must not load a dataset")

    monkeypatch.setattr(speedrun, "load_data", no_data)
    results = speedrun.main(["--device-check", "--check-images", "256", "--batch-size", "64",
                             *SMALL, "--workdir", str(tmp_path / "run"), "--no-progress"])
    row = results["device_check"]
    assert row["images"] == 256 and row["epochs_timed"] == 2 and row["recipe_epochs"] == 9
    assert row["platform"] == "cpu" and row["recipe"] == "airbench94_muon"
    assert row["projected_train_seconds"] == pytest.approx(9 * row["seconds_per_epoch"])
    assert row["compile_seconds"] > 0
    out = capsys.readouterr().out
    assert "projected: 9 epochs of airbench94_muon" in out


def test_ablation_ladder_trains_each_rung_and_plots(tmp_path, fake_data):
    workdir = tmp_path / "run"
    results = speedrun.main(["--ablate", "--rungs", "multicrop_tta,lookahead,baseline,muon",
                             "--ablate-epochs", "1", "--ablate-train-size", "128",
                             "--batch-size", "64", "--eval-split", "fake", *SMALL,
                             "--workdir", str(workdir), "--no-progress"])
    assert set(results["ablate/summary"]) == {"baseline", "lookahead", "multicrop_tta", "muon"}
    muon = results["ablate/muon"]
    assert muon["model"] == "airbench94_muon" and muon["n_train"] == 128
    assert muon["recipe"]["lookahead_every"] == 0 and len(muon["history"]) == 1
    base, look, crop = (results[f"ablate/{r}"] for r in ("baseline", "lookahead", "multicrop_tta"))
    assert base["n_train"] == look["n_train"] == 128
    assert (base["tta"], look["tta"], crop["tta"]) == ("flip", "flip", "flip_translate")
    assert base["model_options"]["whiten_bn"] and not look["model_options"]["whiten_bn"]
    assert len(base["history"]) == 1 and base["history"][0] is not None  # evaluated per epoch
    # Multi-crop TTA changes only the evaluation: that rung evaluates the lookahead rung's net
    # (same history, no training of its own) and its plain accuracy is that rung's.
    assert crop["trained_as"] == "lookahead" and "trained_as" not in look
    assert crop["history"] == look["history"] and crop["recipe"] == look["recipe"]
    assert crop["accuracy_no_tta"] == look["accuracy_no_tta"]
    assert not (workdir / "ablate" / "multicrop_tta" / "checkpoints").exists()
    assert (workdir / "ablate" / "lookahead" / "checkpoints").is_dir()
    assert (workdir / "figures" / "ablation_ladder.png").stat().st_size > 0
    for rung in ("baseline", "multicrop_tta"):
        assert export.load(workdir / "ablate" / rung / "bundle").tta == results[
            f"ablate/{rung}"]["tta"]


def test_top_rung_is_the_full_recipe_and_each_rung_adds_one_thing():
    from jaxcnn.train import recipes

    base = recipes.get("airbench94")
    options, config, tta = speedrun.rung_setup("alternating_flip", base)
    assert config == base and tta == "flip_translate"
    assert options == dict(whiten_bn=False, dirac=True, bn_momentum=0.4)
    options, config, tta = speedrun.rung_setup("baseline", base)
    assert options == dict(whiten_bn=True, dirac=False, bn_momentum=0.9)
    assert config.param_groups == () and config.init_fn is None
    assert config.lookahead_every == 0 and config.flip is True and tta == "flip"
    rungs = [r for r in speedrun.RUNG_NAMES if r != "muon"]
    configs = [speedrun.rung_setup(r, base)[1:] for r in rungs]
    options = [speedrun.rung_setup(r, base)[0] for r in rungs]
    for i in range(1, len(configs)):  # every rung changes something
        assert (configs[i], options[i]) != (configs[i - 1], options[i - 1])
    assert dataclasses.replace(base, epochs=3).epochs == 3
    muon_base = recipes.get("airbench94_muon")
    assert speedrun.rung_setup("muon", base, muon_base) == ({}, muon_base, "flip_translate")
    assert speedrun.rung_model("muon") == "airbench94_muon"
    assert speedrun.rung_model("alternating_flip") == "airbench94"


@pytest.mark.parametrize("argv, match", [
    (["--seeds", "0,x"], "--seeds"),
    (["--seeds", "1,1"], "--seeds"),
    (["--ablate", "--rungs", "warp_drive"], "unknown rung"),
])
def test_bad_flags_are_clear_errors(argv, match, fake_data):
    with pytest.raises(ValueError, match=match):
        speedrun.main([*argv, "--no-progress"])


def test_speedrun_command_on_8_devices_through_the_download_path(tmp_path):
    from fake_archives import make_cifar10_archive, serve_directory

    served = tmp_path / "served"
    archive = make_cifar10_archive(served / "cifar-10-binary.tar.gz", per_batch=26, test=40,
                                   learnable=True)
    with serve_directory(served) as url:
        env = {**os.environ, **fake_cpu_devices(8)}
        env.update(
            PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
            MPLBACKEND="Agg", JAXCNN_CIFAR10_URL=f"{url}/cifar-10-binary.tar.gz",
            JAXCNN_CIFAR10_SHA256=archive["sha256"], JAXCNN_CACHE_DIR=str(tmp_path / "cache"),
        )
        workdir = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.speedrun", "--epochs", "1", "--batch-size", "64",
             *SMALL,
             "--data-dir", str(tmp_path / "data"), "--workdir", str(workdir), "--no-figures",
             "--no-progress"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert 0.0 <= results["seed0"]["accuracy"] <= 1.0
    assert results["seed0"]["n_train"] == 130  # 5 batches of 26


def test_bad_widths_is_one_line_of_error(capsys):
    with pytest.raises(SystemExit) as exc:
        speedrun.build_parser().parse_args(["--widths", "64,256"])
    assert exc.value.code == 2
    assert "three positive integers" in capsys.readouterr().err
