"""jaxcnn.predict: top-k printout and figure from a tiny bundle; clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcnn import export, models, predict


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    model = models.create("mlp", num_classes=3, hidden=(4,))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)), train=False)
    return export.save(root / "bundle", model_name="mlp", model_options={"hidden": (4,)},
                       variables=variables, class_names=["ant", "bee", "cat"],
                       preprocessing=dict(input_size=(6, 6), mean=(0.5,) * 3, std=(0.25,) * 3))


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)).save(a)
    b = tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)).save(b)  # grayscale
    return [a, b]


def test_cli_prints_top_k_and_writes_figure(tiny_bundle, images, tmp_path, capsys):
    fig = tmp_path / "out" / "pred.png"
    assert predict.main([str(tiny_bundle), *map(str, images), "--top-k", "2",
                         "--figure", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "a.png" in out and "b.png" in out and "2." in out and "3." not in out
    assert fig.is_file() and fig.stat().st_size > 1000
    # printed probabilities are the bundle's
    bundle = export.load(tiny_bundle)
    top = bundle.top_k([export.load_image(images[0])], k=2)[0]
    assert f"{top[0][1]:.2%}" in out.split("b.png")[0]


def test_cli_shows_the_bundle_tta_and_overrides_it(tiny_bundle, images, tmp_path, capsys):
    from jaxcnn.evaluate.tta import TTA_MODES

    tta_flag = next(a for a in predict.build_parser()._actions if a.dest == "tta")
    assert tuple(tta_flag.choices) == TTA_MODES
    assert predict.main([str(tiny_bundle), str(images[0])]) == 0
    out = capsys.readouterr().out
    assert "TTA none (stored in the bundle)" in out
    assert predict.main([str(tiny_bundle), str(images[0]), "--tta", "flip", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "TTA flip (--tta)" in out
    # the printed probabilities are those of the bundle loaded with TTA flip
    top = export.load(tiny_bundle, tta="flip").top_k([export.load_image(images[0])], k=3)[0]
    assert all(f"{q:.2%}" in out for _, q in top)
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tiny_bundle), str(images[0]), "--tta", "sideways"])
    assert exit_info.value.code == 2
    assert "--tta: invalid choice" in capsys.readouterr().err


def test_predict_files_matches_bundle(tiny_bundle, images):
    bundle = export.load(tiny_bundle)
    res = predict.predict_files(bundle, images, k=3)
    probs = bundle.predict([export.load_image(p) for p in images])
    for (_path, _, top), p in zip(res, probs, strict=True):
        assert [c for c, _ in top][0] == bundle.class_names[int(p.argmax())]
        np.testing.assert_allclose(sum(q for _, q in top), 1.0, rtol=1e-5)


def test_cli_errors(tiny_bundle, images, tmp_path, capsys):
    assert predict.main([str(tmp_path / "no_bundle"), str(images[0])]) == 2
    assert "no model bundle" in capsys.readouterr().err
    assert predict.main([str(tiny_bundle), str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err
    assert "missing.jpg: not found" in err and "cannot read any" in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert predict.main([str(tiny_bundle), str(bad)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_unreadable_images_are_named_and_skipped(tiny_bundle, images, tmp_path, capsys):
    truncated = tmp_path / "half.jpg"
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
                    ).save(full)
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    missing = tmp_path / "missing.png"
    argv = [str(tiny_bundle), str(images[0]), str(truncated), str(missing), str(images[1])]
    assert predict.main(argv) == 0
    captured = capsys.readouterr()
    assert "a.png" in captured.out and "b.png" in captured.out
    assert "half.jpg" not in captured.out
    assert f"skipped {truncated}:" in captured.err and "truncated" in captured.err
    assert f"skipped {missing}: not found" in captured.err
    assert "2 of 4 image(s) could not be read" in captured.err
    # The library call raises unless asked to collect the skipped files.
    bundle = export.load(tiny_bundle)
    with pytest.raises(ValueError, match="truncated"):
        predict.predict_files(bundle, [images[0], truncated])
    skipped = []
    res = predict.predict_files(bundle, [truncated, images[0]], skipped=skipped)
    assert [p.name for p, _, _ in res] == ["a.png"] and [p for p, _ in skipped] == [truncated]


def test_bad_top_k_is_one_argparse_error(tiny_bundle, images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tiny_bundle), str(images[0]), "--top-k", "0"])
    assert exit_info.value.code == 2
    assert "--top-k: expected an integer >= 1" in capsys.readouterr().err


def test_help_shows_no_empty_defaults():
    text = predict.build_parser().format_help()
    assert "(default: None)" not in text and "(default: 3)" in text


def test_console_script_points_at_main():
    """``jaxcnn-predict`` (pyproject [project.scripts]) resolves to this module's ``main``."""
    import tomllib
    from importlib import import_module
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = pyproject["project"]["scripts"]["jaxcnn-predict"]
    module, _, attr = target.partition(":")
    assert getattr(import_module(module), attr) is predict.main
