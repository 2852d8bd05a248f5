"""``python -m experiments.bench train``: parser, a tiny real run, model options, baselines."""

import json
import sys

import pytest

from experiments.bench import baselines, common, train
from experiments.bench.__main__ import build_parser, main


def test_parser_has_train_with_documented_defaults():
    args = build_parser().parse_args(["train"])
    assert args.func is train.command
    assert args.models == ("mlp", "cnn3")
    assert args.batch_sizes == (128, 512)
    assert (args.steps, args.repeats) == (20, 3)
    assert not args.baselines and not args.json and args.xla_flags is None
    assert args.backend == "auto"
    args = build_parser().parse_args(
        ["train", "--models", "cnn3", "--batch-sizes", "64,256", "--model-option", "a=1",
         "--model-option", "cnn3.b=fast", "--backend", "lax"])
    assert args.models == ("cnn3",) and args.batch_sizes == (64, 256)
    assert args.model_option == ["a=1", "cnn3.b=fast"] and args.backend == "lax"


def test_tiny_run_prints_one_json_object(capsys):
    rc = main(["train", "--models", "mlp", "--batch-sizes", "16,32", "--steps", "2",
               "--repeats", "1", "--warmup", "1", "--pipeline-batches", "2",
               "--dataset-size", "64", "--model-option", "mlp.hidden=(16,)", "--backend", "fast",
               "--json"])
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
        assert row["peak_rss_mb"] > 10 and "whole bench process" in row["peak_rss_of"]
        assert row["jaxcnn_backend"] == "fast"


def test_model_options_parse_and_scope():
    opts = common.parse_model_options(["z=fast", "cnn3.dense=64", "x=(1, 2)", "y=True"])
    assert opts == {"*": {"z": "fast", "x": (1, 2), "y": True}, "cnn3": {"dense": 64}}
    with pytest.raises(ValueError, match="key=value"):
        common.parse_model_options(["oops"])
    for item in ("conv_impl=fast", "cnn3.conv_impl=lax"):  # the kernels are --backend's
        with pytest.raises(ValueError, match="--backend"):
            common.parse_model_options([item])
    # a global option goes only to the models that accept it
    parsed = common.parse_model_options(["filters=(8, 16, 32)", "dtype=bfloat16"])
    assert "filters" in common.options_for("cnn3", parsed)
    assert "filters" not in common.options_for("mlp", parsed)
    assert str(common.options_for("mlp", parsed)["dtype"]) == "bfloat16"
    with pytest.raises(ValueError, match="none of the models"):
        common.check_global_options(["mlp"], common.parse_model_options(["nonsense=1"]))
    with pytest.raises(ValueError, match="none of the models"):
        main(["train", "--models", "mlp", "--model-option", "nonsense=1"])


def _fake_row(model, batch_size, rate, eval_rate, params):
    return {"model": model, "batch_size": batch_size, "train_images_per_s": rate,
            "eval_images_per_s": eval_rate, "compile_s": 10.0, "eval_compile_s": 2.0,
            "train_step_ms": 1e3 * batch_size / rate, "pipeline_images_per_s": 6000.0,
            "pipeline_ratio": 6000.0 / rate, "train_images_per_s_windows": [rate],
            "params": params, "augment": model != "mlp", "model_options": {},
            "peak_rss_mb": 1500.0, "peak_rss_of": train.RSS_SCOPE, "jaxcnn_backend": "onednn"}


def _fake_result(rate=300.0):
    rows = {"mlp": _fake_row("mlp", 128, 5000.0, 9000.0, 1_578_506),
            "cnn3": _fake_row("cnn3", 128, rate, 900.0, 551_466),
            "resnet20": _fake_row("resnet20", 128, 250.0, 800.0, 269_722),
            "cnn3@512": _fake_row("cnn3", 512, 10 * rate, 9000.0, 551_466)}
    meta = {"backend": "cpu", "device": "cpu", "devices": 1, "dtype": "float32", "steps": 2,
            "repeats": 1, "warmup": 1, "pipeline_batches": 2, "data": "synthetic",
            "xla_flags": "", "peak_rss_mb": 1500.0,
            "jaxcnn_backend": {"asked": "auto", "resolved": "onednn"}}
    return {"rows": rows, "meta": meta}


# Fake baseline scripts: keras "runs" at 200 (cnn3) / 100 (resnet20) train img/s, 450 / 400 eval,
# and checks its arguments; torch fails for cnn3 and reports a different parameter count for
# resnet20 (as if jaxcnn's model had been changed by a model option).
_FAKE_KERAS = """import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
assert args["--batch-size"] == "128" and args["--steps"] == "2" and args["--repeats"] == "1"
model = args["--model"]
train, ev = {"cnn3": (200.0, 450.0), "resnet20": (100.0, 400.0)}[model]
print("noise")
print(json.dumps({"framework": "keras-tf", "model": model, "version": "3", "batch_size": 128,
                  "train_images_per_s": train, "eval_images_per_s": ev, "peak_rss_mb": 700.0,
                  "params": {"cnn3": 551466, "resnet20": 269722}[model]}))
"""
_FAKE_TORCH = """import json, sys
model = sys.argv[sys.argv.index("--model") + 1]
if model == "cnn3":
    sys.exit("no torch here")
print(json.dumps({"framework": "torch", "model": model, "version": "2", "batch_size": 128,
                  "train_images_per_s": 500.0, "eval_images_per_s": 1600.0,
                  "peak_rss_mb": 420.0, "params": 123, "note": "eager, 2 threads"}))
"""


@pytest.fixture
def fake_baselines(tmp_path, monkeypatch):
    (tmp_path / baselines.BASELINE_SCRIPTS["keras-tf"]).write_text(_FAKE_KERAS)
    (tmp_path / baselines.BASELINE_SCRIPTS["torch"]).write_text(_FAKE_TORCH)
    monkeypatch.setattr(baselines, "BASELINES_DIR", tmp_path)


def test_baseline_scripts_exist_with_model_choice():
    shared = (baselines.BASELINES_DIR / "peak_rss.py").read_text()
    assert '"--model"' in shared  # add_common_options: the options both scripts take
    for script in baselines.BASELINE_SCRIPTS.values():
        text = (baselines.BASELINES_DIR / script).read_text()
        assert "add_common_options(p, tuple(PARAMS))" in text
        assert "resnet20" in text and "peak_rss_mb" in text
        assert "eval_images_per_s" in text and "import jaxcnn" not in text


def test_baselines_run_as_subprocesses_per_model_and_give_ratios(fake_baselines):
    r = baselines.add_baselines(_fake_result(300.0), sys.executable, steps=2, repeats=1)
    assert list(r["baselines"]) == ["cnn3", "resnet20"]  # mlp has none; cnn3@512 not again
    keras_cnn3 = r["baselines"]["cnn3"]["keras-tf"]
    assert keras_cnn3["model"] == "cnn3"
    assert keras_cnn3["cnn3_ratio"] == keras_cnn3["train_ratio"] == pytest.approx(1.5)
    assert keras_cnn3["eval_ratio"] == pytest.approx(2.0)
    assert keras_cnn3["peak_rss_mb"] == 700.0
    assert "no torch here" in r["baselines"]["cnn3"]["torch"]["error"]
    keras_r20, torch_r20 = (r["baselines"]["resnet20"][fw] for fw in ("keras-tf", "torch"))
    assert keras_r20["train_ratio"] == pytest.approx(2.5)
    assert keras_r20["eval_ratio"] == pytest.approx(2.0)
    assert "cnn3_ratio" not in keras_r20
    assert torch_r20["train_ratio"] == pytest.approx(0.5)
    assert torch_r20["eval_ratio"] == pytest.approx(0.5)

    table = train.format_train(r)
    assert "kernels onednn (--backend auto)" in table
    assert "[PASS] cnn3 train >= keras-tf (1.50x)" in table
    assert "failed: exit 1" in table
    assert "[PASS] input pipeline >= 5x" in table
    assert "peak RSS 1,500 MB: the whole bench process" in table
    lines = table.splitlines()

    def row(model, fw):
        return next(line.split() for line in lines if line.split()[:2] == [model, fw])

    assert row("cnn3", "jaxcnn") == ["cnn3", "jaxcnn", "300", "900", "1,500*"]
    assert row("cnn3", "keras-tf") == ["cnn3", "keras-tf", "200", "450", "700", "1.50", "2.00"]
    assert row("resnet20", "jaxcnn") == ["resnet20", "jaxcnn", "250", "800", "1,500*"]
    assert row("resnet20", "keras-tf") == ["resnet20", "keras-tf", "100", "400", "700", "2.50",
                                           "2.00"]
    assert row("resnet20", "torch") == ["resnet20", "torch", "500", "1,600", "420", "0.50",
                                        "0.50"]
    assert "(not the same model: 123 parameters, jaxcnn 269,722)" in table
    assert "* jaxcnn: the peak RSS of the whole bench process" in table
    assert "resnet20 train >=" not in table  # the bars are cnn3's (docs/design.md)

    out = train.train_json(r)
    assert set(out) == {"mlp", "cnn3", "resnet20", "cnn3@512", "baseline:keras-tf",
                        "baseline:torch", "baseline:keras-tf:resnet20", "baseline:torch:resnet20"}
    assert out["baseline:torch:resnet20"]["peak_rss_mb"] == 420.0
    assert out["resnet20"]["peak_rss_mb"] == 1500.0


def test_train_baselines_cli_runs_them_for_every_model(fake_baselines, monkeypatch, capsys):
    seen = {}

    def fake_bench_train(models, batch_sizes, **kw):
        seen["models"] = models
        r = _fake_result()
        r["rows"] = {k: v for k, v in r["rows"].items() if v["model"] in models}
        return r

    monkeypatch.setattr(train, "bench_train", fake_bench_train)
    argv = ["train", "--models", "cnn3,resnet20", "--baselines", "--baseline-python",
            sys.executable, "--baseline-steps", "2", "--repeats", "1"]
    assert main(argv + ["--json"]) == 0
    assert seen["models"] == ("cnn3", "resnet20")
    out = json.loads(capsys.readouterr().out)
    assert out["baseline:keras-tf"]["train_ratio"] == pytest.approx(1.5)
    assert out["baseline:keras-tf:resnet20"]["eval_images_per_s"] == 400.0
    assert "error" in out["baseline:torch"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "running baselines" in text and "vs baselines, batch 128" in text
    # no model with a baseline: said on stderr, the table has no comparison
    assert main(["train", "--models", "mlp", "--baselines", "--baseline-python",
                 sys.executable, "--repeats", "1"]) == 0
    captured = capsys.readouterr()
    assert "none of the models ['mlp'] has a baseline" in captured.err
    assert "vs baselines" not in captured.out


def test_strip_xla_flags_from_argv():
    argv = ["train", "--xla-flags", "--xla_foo=1", "--json", "--xla-flags=--bar"]
    assert train._strip_option(argv, "--xla-flags") == ["train", "--json"]
