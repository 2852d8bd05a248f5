"""``python -m experiments.bench host``: a tiny real run (table, JSON) and its checks."""

import json

import pytest

from experiments.bench import host
from experiments.bench.__main__ import build_parser, main


def test_parser_defaults():
    args = build_parser().parse_args(["host"])
    assert args.func is host.command
    assert (args.model, args.batch_size, args.steps, args.steps_per_dispatch) == ("cnn3", 128,
                                                                                   16, 8)
    assert args.backend == "auto" and args.workdir.name == "bench_host"


def test_tiny_run_prints_the_table_and_writes_json(tmp_path, capsys):
    rc = main(["host", "--model", "mlp", "--batch-size", "8", "--steps", "2",
               "--steps-per-dispatch", "2", "--repeats", "1", "--backend", "fast",
               "--workdir", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    for words in ("data already on device (floor)", "host path (numpy batch + copy)",
                  "device path, 2 step(s)/call", "host share of a host-path step",
                  "kernels fast"):
        assert words in text, words
    r = json.loads((tmp_path / "bench_host.json").read_text())
    assert set(r["ms_per_step"]) == {"resident", "host", "device x1", "device x2"}
    assert min(r["ms_per_step"].values()) > 0 and r["dataset_size"] == 8 * 2 * 10
    assert r["jaxcnn_backend"] == {"asked": "fast", "resolved": "fast"}


@pytest.mark.parametrize("argv, message", [
    (["--model", "nope"], "unknown model"),
    (["--steps", "3", "--steps-per-dispatch", "2"], "not a multiple"),
    (["--batch-size", "8", "--steps-per-dispatch", "2", "--dataset-size", "8"], "fewer than"),
])
def test_bad_values_are_one_line_errors(argv, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        main(["host", "--workdir", str(tmp_path), *argv])
