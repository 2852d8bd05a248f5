"""experiments.architectures: FLOPs helper, per-layer gradient norms
(jaxcnn.evaluate.inspection), figures, a tiny run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import architectures as exp
from jaxcnn import models
from jaxcnn.evaluate.inspection import conv_grad_norms, conv_layer_paths
from jaxcnn.flops import cost_flops, forward_flops, function_flops
from jaxcnn.models.resnet import CifarResNet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------------- FLOPs


def test_dense_flops_are_two_per_multiply_add():
    layer = nn.Dense(100)
    x = jnp.ones((1, 300))
    variables = jax.jit(layer.init)(jax.random.key(0), x)
    flops = function_flops(lambda v, xx: layer.apply(v, xx), variables, x)
    assert flops == pytest.approx(2 * 300 * 100, rel=0.1)


def test_conv_flops_match_the_multiply_add_count():
    conv = nn.Conv(16, (3, 3), padding="SAME", use_bias=False)
    x = jnp.ones((1, 32, 32, 8))
    variables = jax.jit(conv.init)(jax.random.key(0), x)
    flops = function_flops(lambda v, xx: conv.apply(v, xx), variables, x)
    assert flops == pytest.approx(2 * 32 * 32 * 9 * 8 * 16, rel=0.1)


def test_model_flops_are_plausible():
    lenet = models.create("lenet5")
    v = models.init_shapes(lenet, (1, 32, 32, 3))
    lenet_flops = forward_flops(lenet, v, (1, 32, 32, 3))
    # conv1 28*28*6*75 + conv2 10*10*16*150 + dense 400*120 + 120*84 + 84*10 multiply-adds
    macs = 28 * 28 * 6 * 75 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert lenet_flops == pytest.approx(2 * macs, rel=0.15)
    resnet = models.create("resnet20")
    rv = models.init_shapes(resnet, (1, 32, 32, 3))
    # He et al. / common references: ResNet-20 is about 41M multiply-adds per 32x32 image.
    assert forward_flops(resnet, rv, (1, 32, 32, 3)) == pytest.approx(2 * 41e6, rel=0.15)
    # Batch 2 costs twice batch 1.
    assert forward_flops(lenet, v, (2, 32, 32, 3)) == pytest.approx(2 * lenet_flops, rel=0.05)


def test_cost_flops_reads_dicts_and_lists_and_rejects_empty():
    assert cost_flops({"flops": 10.0}) == 10.0
    assert cost_flops([{"flops": 2.0}, {"flops": 3.0}]) == 5.0
    with pytest.raises(ValueError, match="flops"):
        cost_flops({"bytes accessed": 1.0})
    with pytest.raises(ValueError, match="input_shape"):
        forward_flops(models.create("lenet5"), {}, (32, 32, 3))


# ---------------------------------------------------------------------- gradient norms


def test_conv_layer_paths_follow_the_data_flow():
    model = models.create("resnet20")
    v = models.init_shapes(model, (1, 32, 32, 3))
    paths = conv_layer_paths(model, v, jnp.zeros((1, 32, 32, 3)))
    assert len(paths) == 19
    assert paths[0] == ("stem_conv",)
    assert paths[1:4] == [("stage1_block1", "conv1"), ("stage1_block1", "conv2"),
                          ("stage1_block2", "conv1")]
    assert paths[-1] == ("stage3_block3", "conv2")
    # Every path names a kernel in the params.
    for p in paths:
        layer = v["params"]
        for key in p:
            layer = layer[key]
        assert layer["kernel"].shape[:2] == (3, 3)
    plain56 = models.create("plain56")
    v56 = models.init_shapes(plain56, (1, 32, 32, 3))
    assert len(conv_layer_paths(plain56, v56, jnp.zeros((1, 32, 32, 3)))) == 55


def test_conv_grad_norms_one_entry_per_conv_in_depth_order():
    model = CifarResNet(blocks_per_stage=1)  # depth 8: stem + 3 blocks x 2 convs = 7 convs
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=4)
    variables = exp.init_variables(model, x.shape[1:], 0)
    norms = conv_grad_norms(model, variables, x, y)
    names = [n for n, _ in norms]
    assert names == ["stem_conv", "stage1_block1/conv1", "stage1_block1/conv2",
                     "stage2_block1/conv1", "stage2_block1/conv2", "stage3_block1/conv1",
                     "stage3_block1/conv2"]
    values = np.array([v for _, v in norms])
    assert np.all(np.isfinite(values)) and np.all(values > 0)


def test_conv_grad_norms_match_jax_grad_for_a_model_without_batchnorm():
    model = models.create("lenet5")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    y = np.arange(4)
    variables = exp.init_variables(model, x.shape[1:], 0)
    norms = conv_grad_norms(model, variables, x, y)
    assert [n for n, _ in norms] == ["conv1", "conv2"]

    def loss(p):
        logp = jax.nn.log_softmax(model.apply({"params": p}, x))
        return -jnp.mean(logp[jnp.arange(4), y])

    g = jax.jit(jax.grad(loss))(variables["params"])
    for (name, value) in norms:
        assert value == pytest.approx(float(jnp.linalg.norm(g[name]["kernel"])), rel=1e-4)


# ----------------------------------------------------------------------------- figures


def test_static_figures_are_written(tmp_path):
    out = exp.main(["--lesson", "figures", "--visuals-dir", str(tmp_path)])
    assert len(out["figures"]) == 2
    assert _is_png(tmp_path / "timeline.png")
    assert _is_png(tmp_path / "residual_block.png")


def test_gradient_norms_plot(tmp_path):
    from jaxcnn.viz.architectures import gradient_norms_plot

    path = gradient_norms_plot({"plain56, at init": [3.0, 2.0, 1.0],
                                "resnet56, after epoch 1": [1.0, 1.0, 1.0]},
                               tmp_path / "g.png", note="test")
    assert _is_png(path)
    with pytest.raises(ValueError, match="curves"):
        gradient_norms_plot({}, tmp_path / "h.png")


def test_timeline_marks_paper_figures():
    from jaxcnn.viz.architectures import MILESTONES

    by_name = {m["name"]: m for m in MILESTONES}
    assert [m["year"] for m in MILESTONES] == [1998, 2012, 2014, 2015, 2018, 2019]
    # Params we claim to count ourselves match the registry.
    for m in MILESTONES:
        if m["params_source"] == "jaxcnn" and m["model"] not in (None, "lenet5"):
            model = models.create(m["model"], num_classes=1000)
            shapes = models.init_shapes(model, (1, 224, 224, 3))
            n = models.count_params(shapes["params"])
            assert n / 1e6 == pytest.approx(m["params"], rel=0.01), m["name"]
    assert by_name["LeNet-5"]["top1"] is None


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        exp.main(["--models", "lenet6", "--lesson", "figures"])


def test_zero_init_residual_flag_reaches_only_the_residual_nets():
    args = exp.build_parser().parse_args(["--lesson", "vanishing", "--zero-init-residual"])
    assert exp.model_options("resnet56", args) == {"zero_init_residual": True}
    assert exp.model_options("plain56", args) == {}  # no skip: the option would zero the block
    assert exp.model_options("resnet56", exp.build_parser().parse_args([])) == {}
    model = models.create("resnet20", **exp.model_options("resnet20", args))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    scales = [v["bn2"]["scale"] for k, v in variables["params"].items() if "_block" in k]
    assert len(scales) == 9 and all(float(jnp.abs(s).max()) == 0.0 for s in scales)


def test_epoch1_grad_norms_are_kept_for_a_resumed_run(tmp_path, monkeypatch):
    fits = []
    monkeypatch.setattr(exp, "fit_model", lambda *a, **k: fits.append(k) or SimpleNamespace(
        state=None))
    monkeypatch.setattr(exp, "state_variables", lambda state: {})
    monkeypatch.setattr(exp, "conv_grad_norms", lambda *a, **k: [("c1", 0.5), ("c2", 0.25)])
    call = ("m", None, {}, None, None)
    args = exp.build_parser().parse_args([])
    first = exp.epoch1_grad_norms(*call, args, tmp_path, None, None)
    # A resumed run's checkpoint may be past epoch 1: the kept norms are read back, not remeasured.
    monkeypatch.setattr(exp, "conv_grad_norms", lambda *a, **k: [("c1", 9.0), ("c2", 9.0)])
    again = exp.epoch1_grad_norms(*call, args, tmp_path, None, None)
    assert first == again == [("c1", 0.5), ("c2", 0.25)]
    assert fits == [{"stop_after_epoch": 1}]
    fresh = exp.build_parser().parse_args(["--no-resume"])
    assert exp.epoch1_grad_norms(*call, fresh, tmp_path, None, None) == [("c1", 9.0), ("c2", 9.0)]


# -------------------------------------------------------------------------- tiny run


def test_main_tiny_compare_run_on_real_data(tmp_path, cifar10_data_dir):
    results = exp.main([
        "--models", "lenet5", "--data-dir", str(cifar10_data_dir),
        "--train-split", "train[:2000]", "--eval-split", "train[45000:46000]",
        "--limit-train", "256", "--limit-eval", "256", "--epochs", "1", "--batch-size", "64",
        "--workdir", str(tmp_path / "runs"), "--visuals-dir", str(tmp_path / "vis"),
        "--no-progress",
    ])
    row = results["lenet5"]
    assert row["params"] == 62_006  # LeNet-5 on RGB: 300 more conv1 weights than grayscale
    assert row["flops_per_image"] > 0
    assert 0.0 <= row["test_accuracy"] <= 1.0
    assert row["train_images"] == 256 and row["epochs"] == 1
    saved = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert saved["lenet5"]["params"] == 62_006
    assert _is_png(tmp_path / "vis" / "compare_training_curves.png")
