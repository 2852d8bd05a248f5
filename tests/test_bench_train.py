"""``python -m experiments.bench train``: parser, a tiny real run, model options, baselines."""

import json
import sys

import pytest

from experiments import bench


def test_parser_has_train_with_documented_defaults():
    args = bench.build_parser().parse_args(["train"])
    assert args.func is bench._cmd_train
    assert args.models == ("mlp", "cnn3")
    assert args.batch_sizes == (128, 512)
    assert (args.steps, args.repeats) == (20, 3)
    assert not args.baselines and not args.json and args.xla_flags is None
    args = bench.build_parser().parse_args(
        ["train", "--models", "cnn3", "--batch-sizes", "64,256", "--model-option", "a=1",
         "--model-option", "cnn3.b=fast"])
    assert args.models == ("cnn3",) and args.batch_sizes == (64, 256)
    assert args.model_option == ["a=1", "cnn3.b=fast"]


def test_tiny_run_prints_one_json_object(capsys):
    rc = bench.main(["train", "--models", "mlp", "--batch-sizes", "16,32", "--steps", "2",
                     "--repeats", "1", "--warmup", "1", "--pipeline-batches", "2",
                     "--dataset-size", "64", "--model-option", "mlp.hidden=(16,)", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert set(result) == {"mlp", "mlp@32"}
    for key, bs in (("mlp", 16), ("mlp@32", 32)):
        row = result[key]
        assert row["batch_size"] == bs
        for field in ("train_images_per_s", "eval_images_per_s", "compile_s",
                      "pipeline_images_per_s", "pipeline_ratio"):
            assert row[field] > 0, (key, field)
        assert row["params"] == 3072 * 16 + 16 + 16 * 10 + 10  # the model option reached it
        assert row["model_options"] == {"hidden": [16]}
        assert row["augment"] is False  # the mlp recipe of experiments.cifar10


def test_model_options_parse_and_scope():
    opts = bench.parse_model_options(["conv_impl=fast", "cnn3.dense=64", "x=(1, 2)", "y=True"])
    assert opts == {"*": {"conv_impl": "fast", "x": (1, 2), "y": True}, "cnn3": {"dense": 64}}
    with pytest.raises(ValueError, match="key=value"):
        bench.parse_model_options(["oops"])
    # a global option goes only to the models that accept it
    parsed = bench.parse_model_options(["filters=(8, 16, 32)", "dtype=bfloat16"])
    assert "filters" in bench.options_for("cnn3", parsed)
    assert "filters" not in bench.options_for("mlp", parsed)
    assert str(bench.options_for("mlp", parsed)["dtype"]) == "bfloat16"
    with pytest.raises(ValueError, match="none of the models"):
        bench._check_global_options(["mlp"], bench.parse_model_options(["nonsense=1"]))


def _fake_result(rate=300.0):
    row = {"model": "cnn3", "batch_size": 128, "train_images_per_s": rate,
           "eval_images_per_s": 900.0, "compile_s": 10.0, "eval_compile_s": 2.0,
           "train_step_ms": 426.7, "pipeline_images_per_s": 6000.0, "pipeline_ratio": 20.0,
           "train_images_per_s_windows": [rate], "params": 551_466, "augment": True,
           "model_options": {}}
    meta = {"backend": "cpu", "device": "cpu", "devices": 1, "dtype": "float32", "steps": 2,
            "repeats": 1, "warmup": 1, "pipeline_batches": 2, "data": "synthetic",
            "xla_flags": ""}
    return {"rows": {"cnn3": row}, "meta": meta}


def test_baselines_run_as_subprocesses_and_give_ratios(tmp_path, monkeypatch):
    good = tmp_path / "keras_cnn3.py"
    good.write_text("import json, sys\nassert '--batch-size' in sys.argv\n"
                    "print('noise')\nprint(json.dumps({'framework': 'keras-tf', "
                    "'version': '3', 'train_images_per_s': 200.0}))\n")
    (tmp_path / "torch_cnn3.py").write_text("import sys\nsys.exit('no torch here')\n")
    monkeypatch.setattr(bench, "BASELINES_DIR", tmp_path)
    r = bench.add_baselines(_fake_result(300.0), sys.executable, steps=2, repeats=1)
    assert r["baselines"]["keras-tf"]["cnn3_ratio"] == pytest.approx(1.5)
    assert "no torch here" in r["baselines"]["torch"]["error"]
    table = bench.format_train(r)
    assert "[PASS] cnn3 train >= keras-tf (1.50x)" in table
    assert "failed: exit 1" in table
    assert "[PASS] input pipeline >= 5x" in table
    out = bench.train_json(r)
    assert set(out) == {"cnn3", "baseline:keras-tf", "baseline:torch"}


def test_strip_xla_flags_from_argv():
    argv = ["train", "--xla-flags", "--xla_foo=1", "--json", "--xla-flags=--bar"]
    assert bench._strip_option(argv, "--xla-flags") == ["train", "--json"]
