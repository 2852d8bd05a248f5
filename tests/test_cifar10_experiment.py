"""End to end: ``python -m experiments.cifar10`` on a tiny generated CIFAR-like dataset.

Trains mlp and cnn3 for one epoch and the lite0_transfer row (real EfficientNet-Lite0 weights,
32 px input), then checks the results file, the bundles (with the default flip TTA) and that
``--eval-only`` reproduces every accuracy from what was saved (with ``--tta none``: no TTA
column, bundles without TTA).
"""

import json

import pytest
from tiny_data import CIFAR_CLASSES, tiny_cifar

from experiments import cifar10
from jaxcnn import export


@pytest.fixture
def fake_data(monkeypatch):
    data = (tiny_cifar(256, 0), tiny_cifar(96, 1))
    monkeypatch.setattr(cifar10, "load_data", lambda args: data)
    return data


def _table_header(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("model "))


def test_main_trains_exports_and_reevaluates(tmp_path, fake_data, capsys):
    workdir = tmp_path / "run"
    argv = ["--models", "mlp,cnn3,lite0_transfer", "--epochs", "1", "--batch-size", "64",
            "--transfer-size", "32", "--transfer-epochs", "40", "--transfer-lr", "0.01",
            "--workdir", str(workdir),
            "--visuals-dir", str(tmp_path / "vis"), "--no-progress", "--eval-split", "fake"]
    results = cifar10.main(argv)
    out = capsys.readouterr().out
    assert set(results) == {"mlp", "cnn3", "lite0_transfer"}
    assert json.loads((workdir / "results.json").read_text()) == results
    assert results["cnn3"]["params"] == 551_466
    assert results["lite0_transfer"]["trainable_params"] == 1280 * 10 + 10
    for name, row in results.items():
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert name in out
    # The transfer head learns the colour code well above chance (10%).
    assert results["lite0_transfer"]["test_accuracy"] > 0.3
    # Its bundle predicts from 32x32 uint8 images with the accuracy that was reported.
    bundle = export.load(workdir / "lite0_transfer" / "bundle")
    assert tuple(bundle.class_names) == CIFAR_CLASSES
    probs = bundle.predict(fake_data[1].images)
    acc = float((probs.argmax(-1) == fake_data[1].labels).mean())
    assert acc == pytest.approx(results["lite0_transfer"]["test_accuracy"], abs=1.5 / 96)
    assert (tmp_path / "vis" / "confusion_matrix.png").stat().st_size > 0
    assert (tmp_path / "vis" / "cnn3_first_layer_filters.png").exists()
    # --tta flip (the default): the models trained here get a TTA column; the transfer row not.
    for name in ("mlp", "cnn3"):
        assert 0.0 <= results[name]["test_accuracy_tta"] <= 1.0 and results[name]["tta"] == "flip"
    assert "test_accuracy_tta" not in results["lite0_transfer"]
    assert "flip TTA" in _table_header(out)
    assert export.load(workdir / "lite0_transfer" / "bundle").tta == "none"
    # The bundle stores the mode and predicts like the TTA column.
    mlp = export.load(workdir / "mlp" / "bundle")
    assert mlp.tta == "flip"
    acc = float((mlp.predict(fake_data[1].images).argmax(-1) == fake_data[1].labels).mean())
    assert acc == pytest.approx(results["mlp"]["test_accuracy_tta"], abs=1.5 / 96)

    again = cifar10.main(argv + ["--eval-only", "--no-figures", "--tta", "none"])
    out = capsys.readouterr().out
    for name in results:
        assert again[name]["test_accuracy"] == pytest.approx(results[name]["test_accuracy"],
                                                             abs=1.5 / 96), name
        assert "test_accuracy_tta" not in again[name] and "tta" not in again[name]
    assert "TTA" not in _table_header(out)
    assert export.load(workdir / "mlp" / "bundle").tta == "none"


def test_table_has_a_tta_column_only_when_a_row_has_tta():
    rows = {
        "cnn3": dict(test_accuracy=0.8, test_accuracy_std=0.01, test_accuracy_tta=0.82,
                     test_accuracy_tta_std=0.02, tta="flip_translate", params=551_466),
        "lite0_transfer": dict(test_accuracy=0.87, params=4_000_000),
    }
    lines = cifar10.format_table(rows, ["cnn3", "lite0_transfer"]).splitlines()
    assert "flip_translate TTA" in lines[0]
    assert "82.00+-2.00%" in lines[2] and lines[3].split()[2] == "-"
    del rows["cnn3"]["test_accuracy_tta"]
    assert "TTA" not in cifar10.format_table(rows, ["cnn3", "lite0_transfer"])
    parse = cifar10.build_parser().parse_args
    assert parse([]).tta == "flip" and parse(["--tta", "none"]).tta == "none"


def test_unknown_model_is_a_clear_error(fake_data):
    with pytest.raises(ValueError, match="unknown model.*lite0_transfer"):
        cifar10.main(["--models", "resnet9000", "--no-progress"])


def test_models_help_lists_every_accepted_name():
    from jaxcnn import models

    text = " ".join(cifar10.build_parser().format_help().split())
    for name in [*models.available(), "lite0_transfer"]:
        assert name in text, name


def test_epochs_reaches_the_transfer_head():
    parse = cifar10.build_parser().parse_args
    assert cifar10.transfer_epochs(parse([])) == cifar10.TRANSFER_EPOCHS
    assert cifar10.transfer_epochs(parse(["--epochs", "3"])) == 3
    assert cifar10.transfer_epochs(parse(["--epochs", "3", "--transfer-epochs", "5"])) == 5


def test_batch_larger_than_the_training_set_is_one_line(fake_data, tmp_path, capsys):
    from experiments import _cli

    argv = ["--models", "mlp", "--batch-size", "100000", "--workdir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"--batch-size 100000 is larger than the training set "
                                         r"\(256 images\)"):
        cifar10.main(argv)
    with pytest.raises(SystemExit) as exit_info:
        _cli.run(cifar10.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --batch-size 100000") and err.count("\n") == 1
    assert "Traceback" not in err
