"""experiments/_cli: --help defaults, flag value checks, one-line errors, split overlap,
progress defaults, and that a default run writes its figures under --workdir, never into the
repository's committed visuals/."""

from __future__ import annotations

import argparse
import hashlib
import sys

import pytest
from tiny_data import tiny_cifar

from experiments import (
    _cli,
    architectures,
    cifar10,
    conv_math,
    custom,
    flowers,
    from_scratch,
)
from experiments.bench import __main__ as bench

EXPERIMENTS = (architectures, bench, cifar10, conv_math, custom, flowers, from_scratch)


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


# ----------------------------------------------------------------------------------- --help


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__.split(".")[-1])
def test_help_shows_only_meaningful_defaults(module):
    shown = 0
    for parser in _all_parsers(module.build_parser()):
        text = " ".join(parser.format_help().split())  # undo the line wrapping
        for meaningless in ("(default: None)", "(default: True)", "(default: False)",
                            "(default: [])", "(default: )", "(default: ())"):
            assert meaningless not in text, (parser.prog, meaningless)
        shown += text.count("(default:")
    assert shown >= 1  # real defaults are still shown


def test_help_formatter_rules():
    p = _cli.make_parser("demo", "demo")
    p.add_argument("--size", type=int, default=3, help="a size")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over")
    p.add_argument("--names", default=("a", "b"), help="names")
    p.add_argument("--pct", default="50%", help="a 50%% share")
    p.add_argument("--said", default=7, help="seven (default: 7, the lucky one)")
    text = " ".join(p.format_help().split())
    assert "a size (default: 3)" in text
    assert "learning rate (default: the recipe's)" in text and "None" not in text
    assert "start over" in text and "True" not in text
    assert "names (default: a,b)" in text
    assert "a 50% share (default: 50%)" in text
    assert text.count("(default: 7") == 1


def test_common_flags_and_figures_dir(tmp_path):
    p = _cli.add_common(_cli.make_parser("demo", "demo"), "demo", data_dir=True)
    args = p.parse_args(["--workdir", str(tmp_path)])
    assert args.visuals_dir is None
    assert _cli.figures_dir(args) == tmp_path / "figures"
    args = p.parse_args(["--workdir", str(tmp_path), "--visuals-dir", "visuals/demo"])
    assert str(_cli.figures_dir(args)) == "visuals/demo"
    text = " ".join(p.format_help().split())
    assert "<workdir>/figures" in text and "--visuals-dir visuals/demo" in text


# ------------------------------------------------------------------------- flag value checks


@pytest.mark.parametrize("split", ["train", "test", "train[:45000]", "train[45000:]",
                                   "train[10:20]", "train[:90%]", "test[-10%:]", "train[:-500]",
                                   "train[:]", "train+test", " train[1%:2%] "])
def test_good_splits_pass(split):
    assert _cli.tfds_split(split) == split.strip()


@pytest.mark.parametrize("split", ["train[:500", "train[a:b]", "train[:500]]", "", "[:5]",
                                   "train[5]", "train[:150%]", "train[1.5:]", "train+"])
def test_bad_splits_are_one_argparse_error(split, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="split"):
        _cli.tfds_split(split)
    with pytest.raises(SystemExit) as exit_info:
        cifar10.build_parser().parse_args(["--train-split", split])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m experiments.cifar10: error: ")
    assert "--train-split" in err and "Traceback" not in err


@pytest.mark.parametrize(("kind", "bad"), [
    (_cli.positive_int, "0"), (_cli.positive_int, "x"), (_cli.non_negative_int, "-1"),
    (_cli.positive_float, "0"), (_cli.positive_float, "nan"), (_cli.non_negative_float, "-1e-3"),
    (_cli.unit_interval, "1"), (_cli.unit_interval, "0"), (_cli.smoothing, "1"),
])
def test_value_types_reject(kind, bad):
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        kind(bad)


def test_bench_subcommand_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.build_parser().parse_args(["train", "--steps", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps: expected an integer >= 1" in err


def test_experiment_flags_are_checked_while_parsing(capsys):
    cases = [(flowers, ["--val-fraction", "1.5"]), (custom, ["--data-dir", "x", "--val-fraction",
                                                              "0"]),
             (cifar10, ["--label-smoothing", "-0.1"]), (cifar10, ["--cutout", "-2"]),
             (custom, ["--data-dir", "x", "--fine-tune-epochs", "-1"])]
    for module, argv in cases:
        with pytest.raises(SystemExit) as exit_info:
            module.build_parser().parse_args(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert "error: argument" in err and err.count("\n") == 1, argv


# --------------------------------------------------------------------- split overlap warning


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("train", "train[45000:]", True),
    ("train[:45000]", "train[40000:]", True),
    ("train[:45000]", "train[45000:]", False),
    ("train", "test", False),
    ("train[:90%]", "train[90%:]", False),
    ("train[:10%]", "train[5%:]", True),
    ("train[-5000:]", "train[:-5000]", False),
    ("train[:0]", "train", False),
    ("train+test", "test[:10]", True),
    ("train[:50%]", "train[45000:]", None),  # cannot tell without the split's size
])
def test_splits_overlap(a, b, expected):
    assert _cli.splits_overlap(a, b) is expected
    assert _cli.splits_overlap(b, a) is expected


def test_splits_overlap_with_known_sizes():
    sizes = _cli.CIFAR10_SPLIT_SIZES
    assert _cli.splits_overlap("train[:50%]", "train[45000:]", sizes) is False
    assert _cli.splits_overlap("train[:95%]", "train[45000:]", sizes) is True
    assert _cli.splits_overlap("train[:45000]", "train[-5000:]", sizes) is False


def test_overlap_warning_is_printed(capsys):
    assert _cli.warn_split_overlap("train", "train[45000:]") is True
    err = capsys.readouterr().err
    assert err.startswith("warning:") and "overlap" in err and err.count("\n") == 1
    assert _cli.warn_split_overlap("train[:45000]", "train[45000:]") is False
    assert _cli.warn_split_overlap("train", "test") is False
    assert capsys.readouterr().err == ""
    assert _cli.warn_split_overlap("train[:50%]", "train[45000:]") is None
    assert "may overlap" in capsys.readouterr().err


# ----------------------------------------------------------------------- errors and run()


def test_run_turns_library_errors_into_one_line(capsys):
    def bad_value(argv):
        raise ValueError("--thing must be positive, got -1")

    def missing(argv):
        raise FileNotFoundError("no checkpoint in runs/x")

    for main, text in ((bad_value, "error: --thing must be positive, got -1\n"),
                       (missing, "error: no checkpoint in runs/x\n")):
        with pytest.raises(SystemExit) as exit_info:
            _cli.run(main, [])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == text


def test_run_shows_the_traceback_when_asked(monkeypatch):
    def bad_value(argv):
        raise ValueError("bad")

    monkeypatch.setenv("JAXCNN_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bad"):
        _cli.run(bad_value, [])


def test_run_exit_codes_and_other_errors(capsys):
    for result, code in ((0, 0), (3, 3), ({"a": 1}, 0), (None, 0)):
        with pytest.raises(SystemExit) as exit_info:
            _cli.run(lambda argv, r=result: r, [])
        assert exit_info.value.code == code

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        _cli.run(interrupted, [])
    assert exit_info.value.code == 130 and capsys.readouterr().err.count("\n") == 1

    def bug(argv):
        raise RuntimeError("a bug keeps its traceback")

    with pytest.raises(RuntimeError):
        _cli.run(bug, [])


def test_check_batch_size():
    _cli.check_batch_size(128, 128)
    with pytest.raises(ValueError, match=r"^--batch-size 100000 is larger than the training set "
                                         r"\(45,000 images\); pass --batch-size 45000 or less"):
        _cli.check_batch_size(100_000, 45_000)


# ------------------------------------------------------------------------------- progress


@pytest.mark.parametrize("module", [cifar10, architectures, flowers, from_scratch],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_progress_follows_the_terminal(module, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert module.build_parser().parse_args([]).progress is False
    assert module.build_parser().parse_args(["--progress"]).progress is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert module.build_parser().parse_args([]).progress is True
    assert module.build_parser().parse_args(["--no-progress"]).progress is False


# ------------------------------------------------ a default run leaves visuals/ untouched


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).digest())
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def visuals_untouched(monkeypatch):
    """Run from the repository root (where the old default ``visuals/<lesson>`` pointed) and
    check afterwards that no file under the committed visuals/ changed or appeared."""
    visuals = _cli.REPO_ROOT / "visuals"
    before = _snapshot(visuals)
    monkeypatch.chdir(_cli.REPO_ROOT)
    yield
    assert _snapshot(visuals) == before


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_conv_math_default_writes_figures_under_workdir(tmp_path, visuals_untouched):
    assert conv_math.main(["--workdir", str(tmp_path), "--quiet"]) == 0
    assert _pngs(tmp_path / "figures") == sorted(conv_math.FIGURES)


def test_architectures_figures_lesson_default_writes_under_workdir(tmp_path, visuals_untouched):
    out = architectures.main(["--lesson", "figures", "--workdir", str(tmp_path)])
    assert _pngs(tmp_path / "figures") == ["residual_block.png", "timeline.png"]
    assert len(out["figures"]) == 2


def test_cifar10_default_writes_figures_under_workdir(tmp_path, monkeypatch, visuals_untouched,
                                                      capsys):
    data = (tiny_cifar(64, 0), tiny_cifar(32, 1))
    monkeypatch.setattr(cifar10, "load_data", lambda args: data)
    cifar10.main(["--workdir", str(tmp_path), "--models", "mlp", "--epochs", "1",
                  "--batch-size", "32"])
    assert f"figures: {tmp_path / 'figures'}/" in capsys.readouterr().out
    pngs = _pngs(tmp_path / "figures")
    assert {"samples.png", "confusion_matrix.png", "training_curves.png"} <= set(pngs)


@pytest.mark.slow  # 13 s; the other lessons' runs cover the same rule by default
def test_from_scratch_default_writes_figures_under_workdir(tmp_path, visuals_untouched, capsys,
                                                          monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)  # as in a log file
    assert from_scratch.main(["--workdir", str(tmp_path), "--epochs", "1"]) == 0
    assert _pngs(tmp_path / "figures") == sorted(from_scratch.FIGURES)
    out = capsys.readouterr().out
    assert "epoch 1/1: loss" in out  # no bar (stderr is not a terminal): one line per epoch
    assert (tmp_path / "results.json").is_file()


# ------------------------------------------------------------- lessons do not import each other


def test_lessons_import_only_shared_plumbing():
    """docs/design.md "One engine": a lesson imports ``experiments._cli`` (shared plumbing) and
    its own private helpers (``experiments._<lesson>_*``, e.g. the speedrun's report), never
    another lesson (nor the benchmarks, ``experiments.bench``); recipes come from the library
    (``jaxcnn.train.recipes``)."""
    import ast

    shared = {"_cli"}
    lessons = sorted((_cli.REPO_ROOT / "experiments").glob("*.py"))
    assert len(lessons) >= 7
    for path in lessons:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] != "experiments":
                    continue
                names = parts[1:2] or [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names
                         if a.name.startswith("experiments.")]
            else:
                continue
            own = {n for n in names if n.startswith(f"_{path.stem}_")}
            assert set(names) - own <= shared, f"{path.name} imports experiments.{names}"


# ------------------------------------------------------------------- results.json and tables


def test_update_results_merges_atomically(tmp_path):
    import json

    path = tmp_path / "run" / "results.json"
    _cli.update_results(path, "b", {"acc": 0.5})
    merged = _cli.update_results(path, "a", {"acc": 0.75})
    assert merged == {"a": {"acc": 0.75}, "b": {"acc": 0.5}}
    assert json.loads(path.read_text()) == merged
    assert list(path.read_text().splitlines()[1:3]) == ['  "a": {', '    "acc": 0.75']  # sorted
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temp file left
    with pytest.raises(TypeError):
        _cli.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == merged  # a failed write leaves the old file whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_format_table_aligns_columns():
    text = _cli.format_table([("model", 6), ("acc", 7)], [["cnn3", "88.1%"], ["mlp", "54.3%"]])
    assert text.splitlines() == ["model      acc", "--------------", "cnn3     88.1%",
                                 "mlp      54.3%"]
