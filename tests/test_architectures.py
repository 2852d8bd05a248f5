"""Classic architectures: LeNet-5, AlexNet-mini, VGG, CIFAR and ImageNet ResNets, plain nets.

Parameter counts and shapes come from ``jax.eval_shape`` (nothing compiled); only the
zero-init identity checks, a few tiny layer checks and one jitted SGD step per CIFAR model run
for real.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.models.alexnet import local_response_norm
from jaxcnn.models.resnet import BasicBlock, shortcut_a
from jaxcnn.models.resnet_imagenet import Bottleneck

CIFAR = (2, 32, 32, 3)


def rkey(seed):
    """A PRNG key of the "rbg" kind: initialisers compile about 4x faster than with threefry."""
    return jax.random.key(seed, impl="rbg")


def run_jitted(fun, *args):
    """``jax.jit(fun)(*args)`` compiled at XLA backend optimisation level 0: these tests run each
    function once, and level 0 halves the compile time (the numbers are the same)."""
    compiled = jax.jit(fun).lower(*args).compile({"xla_backend_optimization_level": 0})
    return compiled(*args)


IMAGENET = (2, 224, 224, 3)


# ----------------------------------------------------------------------------- counting by hand
def conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def dense(cin, cout):
    return cin * cout + cout


def cifar_resnet_count(n, shortcut="A", classes=10):
    """Trainable params of He et al.'s CIFAR ResNet, counted independently of the module."""
    total = conv(3, 3, 16) + 2 * 16  # stem conv + BN
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(3, cin, width) + conv(3, width, width) + 4 * width
            if cin != width and shortcut == "B":
                total += conv(1, cin, width) + 2 * width
            cin = width
    return total + dense(64, classes)


def imagenet_resnet_count(sizes, bottleneck, bias=False, classes=1000):
    """(trainable, BN running statistics) of an ImageNet ResNet, counted by hand."""
    params, bn = conv(7, 3, 64, bias), 64
    cin = 64
    for width, n in zip((64, 128, 256, 512), sizes, strict=True):
        for b in range(n):
            if bottleneck:
                out = 4 * width
                layers = [(1, cin, width), (3, width, width), (1, width, out)]
            else:
                out = width
                layers = [(3, cin, width), (3, width, width)]
            if cin != out or (b == 0 and width != 64):
                layers.append((1, cin, out))
            params += sum(conv(k, i, o, bias) for k, i, o in layers)
            bn += sum(o for _, _, o in layers)
            cin = out
    params += 2 * bn + dense(cin, classes)
    return params, 2 * bn


def test_hand_counts_agree_with_published_figures():
    # the counters above must themselves reproduce the literature before they judge the modules
    assert cifar_resnet_count(3) == 269_722  # "0.27M" in He et al. Table 6
    params, stats = imagenet_resnet_count((2, 2, 2, 2), False)
    assert params == 11_689_512  # torchvision resnet18
    params, stats = imagenet_resnet_count((3, 4, 6, 3), True, bias=True)
    assert params + stats == 25_636_712  # Keras ResNet50, moving statistics included


COUNTS = [
    # name, options, input shape, trainable, non-trainable (BatchNorm running statistics)
    ("lenet5", {}, (1, 32, 32, 1), 61_706, 0),
    ("lenet5", {}, (1, 28, 28, 1), 61_706, 0),  # padded to 32x32 inside
    ("lenet5", {"modern": True}, (1, 32, 32, 1), 61_706, 0),
    ("alexnet_mini", {}, CIFAR, 2_248_906, 0),
    ("vgg_mini", {}, CIFAR, 962_858, 1_152),
    ("vgg_mini", {"batch_norm": False}, CIFAR, 961_706, 0),
    ("vgg16", {"num_classes": 1000}, IMAGENET, 138_357_544, 0),
    ("vgg16", {"num_classes": 1000, "include_top": False}, IMAGENET, 14_714_688, 0),
    ("vgg16", {"num_classes": 1000, "batch_norm": True}, IMAGENET, 138_365_992, 8_448),
    ("vgg19", {"num_classes": 1000}, IMAGENET, 143_667_240, 0),
    ("vgg19", {"num_classes": 1000, "include_top": False}, IMAGENET, 20_024_384, 0),
    ("resnet20", {}, CIFAR, cifar_resnet_count(3, "A"), 1_376),
    ("resnet20", {"shortcut": "B"}, CIFAR, cifar_resnet_count(3, "B"), 1_568),
    ("resnet32", {}, CIFAR, cifar_resnet_count(5, "A"), 2_272),
    ("resnet32", {"shortcut": "B"}, CIFAR, cifar_resnet_count(5, "B"), 2_464),
    ("resnet56", {}, CIFAR, cifar_resnet_count(9, "A"), 4_064),
    ("resnet56", {"shortcut": "B"}, CIFAR, cifar_resnet_count(9, "B"), 4_256),
    ("plain20", {}, CIFAR, cifar_resnet_count(3, "A"), 1_376),
    ("plain56", {}, CIFAR, cifar_resnet_count(9, "A"), 4_064),
    ("resnet18", {"num_classes": 1000}, IMAGENET, 11_689_512, 9_600),
    ("resnet34", {"num_classes": 1000}, IMAGENET, 21_797_672, 17_024),
    ("resnet50", {"num_classes": 1000}, IMAGENET, 25_557_032, 53_120),
    ("resnet50", {"num_classes": 1000, "keras_compat": True}, IMAGENET, 25_583_592, 53_120),
    ("mobilenet_v2", {"num_classes": 1000}, IMAGENET, 3_504_872, 34_112),
    ("mobilenet_v2", {"num_classes": 1000, "include_top": False}, IMAGENET, 2_223_872, 34_112),
]


@pytest.mark.parametrize(("name", "options", "shape", "trainable", "stats"), COUNTS)
def test_param_counts(name, options, shape, trainable, stats):
    counts = models.param_counts(models.create(name, **options), shape)
    assert counts == {"trainable": trainable, "non_trainable": stats, "total": trainable + stats}


def test_headline_counts():
    assert cifar_resnet_count(3, "A") == 269_722 and cifar_resnet_count(3, "B") == 272_474
    assert cifar_resnet_count(5, "A") == 464_154 and cifar_resnet_count(9, "A") == 853_018
    lenet = conv(5, 1, 6, True) + conv(5, 6, 16, True) + dense(400, 120) + dense(120, 84)
    assert lenet + dense(84, 10) == 61_706
    keras = models.param_counts(models.create("resnet50", num_classes=1000, keras_compat=True),
                                (1, 224, 224, 3))
    assert keras["total"] == 25_636_712  # Keras' ResNet50 count (trainable + moving stats)
    mobilenet = models.param_counts(models.create("mobilenet_v2", num_classes=1000),
                                    (1, 224, 224, 3))
    assert mobilenet["total"] == 3_538_984  # Keras' MobileNetV2 count (moving stats included)
    assert (imagenet_resnet_count((3, 4, 6, 3), True)[0], imagenet_resnet_count((3, 4, 6, 3),
            False)[0]) == (25_557_032, 21_797_672)


# ----------------------------------------------------------------------------- shapes (no compile)
def shapes(model, shape, **kwargs):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    out, variables = jax.eval_shape(
        lambda x: model.init_with_output(rkey(0), x, train=False, **kwargs), x
    )
    return out, variables


CIFAR_MODELS = ["lenet5", "alexnet_mini", "vgg_mini", "resnet20", "resnet32", "resnet56",
                "plain20", "plain56"]
FEATURES = {"lenet5": 84, "alexnet_mini": 512, "vgg_mini": 256, "resnet20": 64, "resnet32": 64,
            "resnet56": 64, "plain20": 64, "plain56": 64}


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_shapes_features_and_bf16(name):
    channels = 1 if name == "lenet5" else 3
    model = models.create(name, num_classes=10)
    out, variables = shapes(model, (2, 32, 32, channels))
    assert (out.shape, out.dtype) == ((2, 10), jnp.float32)
    feats, _ = shapes(model, (2, 32, 32, channels), return_features=True)
    assert (feats.shape, feats.dtype) == ((2, FEATURES[name]), jnp.float32)
    assert "head" in variables["params"]
    # other sizes work too (global pooling or a dense layer sized from the input)
    out, _ = shapes(model, (2, 48, 40, channels))
    assert out.shape == (2, 10)
    # bf16 compute: float32 params and logits
    bf = models.create(name, num_classes=10, dtype=jnp.bfloat16)
    out, variables = shapes(bf, (2, 32, 32, channels))
    assert out.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    ("name", "width"), [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)]
)
def test_imagenet_resnet_shapes(name, width):
    model = models.create(name, num_classes=1000)
    for size in (32, 224):
        out, _ = shapes(model, (2, size, size, 3))
        assert (out.shape, out.dtype) == ((2, 1000), jnp.float32)
        feats, _ = shapes(model, (2, size, size, 3), return_features=True)
        assert feats.shape == (2, width)
    out, variables = shapes(models.create(name, num_classes=5, dtype=jnp.bfloat16), (2, 64, 64, 3))
    assert (out.shape, out.dtype) == ((2, 5), jnp.float32)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def intermediates(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(
        lambda x: model.init(rkey(0), x, train=False, capture_intermediates=True), x
    )
    return variables["intermediates"]


def test_imagenet_resnet_stem_and_stages_224():
    inter = intermediates(models.create("resnet50", num_classes=1000), IMAGENET)
    assert inter["stem_conv"]["__call__"][0].shape == (2, 112, 112, 64)
    for s, (hw, c) in enumerate([(56, 256), (28, 512), (14, 1024), (7, 2048)], 1):
        assert inter[f"stage{s}_block1"]["__call__"][0].shape == (2, hw, hw, c)


def test_resnet50_stride_placement_and_keras_layout():
    # v1.5 (default): stage2's first block keeps 56x56 through conv1, strides in the 3x3 conv2
    v15 = intermediates(models.create("resnet50", num_classes=1000), IMAGENET)["stage2_block1"]
    assert v15["conv1"]["__call__"][0].shape == (2, 56, 56, 128)
    assert v15["conv2"]["__call__"][0].shape == (2, 28, 28, 128)
    keras = models.create("resnet50", num_classes=1000, keras_compat=True)
    v1 = intermediates(keras, IMAGENET)["stage2_block1"]
    assert v1["conv1"]["__call__"][0].shape == (2, 28, 28, 128)  # v1: strided 1x1 conv
    assert keras.bn_epsilon == 1.001e-5 and keras.conv_bias and keras.stride_in_1x1
    _, variables = shapes(keras, (1, 64, 64, 3))
    block = variables["params"]["stage1_block1"]
    assert set(block) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "proj_conv", "proj_bn"}
    assert set(block["conv1"]) == {"kernel", "bias"}
    assert set(variables["batch_stats"]["stem_bn"]) == {"mean", "var"}
    _, variables = shapes(models.create("resnet50"), (1, 64, 64, 3))
    assert set(variables["params"]["stem_conv"]) == {"kernel"}  # no bias by default
    # an explicit option overrides keras_compat
    assert not models.create("resnet50", keras_compat=True, stride_in_1x1=False).stride_in_1x1


def test_vgg_shapes_and_input_size_errors():
    vgg = models.create("vgg16", num_classes=1000)
    out, variables = shapes(vgg, IMAGENET)
    assert out.shape == (2, 1000)
    assert variables["params"]["fc1"]["kernel"].shape == (7 * 7 * 512, 4096)
    feats, _ = shapes(vgg, IMAGENET, return_features=True)
    assert feats.shape == (2, 4096)
    with pytest.raises(ValueError, match="224x224.*include_top=False"):
        shapes(vgg, CIFAR)
    base = models.create("vgg19", include_top=False)
    assert shapes(base, CIFAR)[0].shape == (2, 1, 1, 512)
    assert shapes(base, IMAGENET)[0].shape == (2, 7, 7, 512)
    assert shapes(base, IMAGENET, return_features=True)[0].shape == (2, 7, 7, 512)
    pooled = models.create("vgg16", include_top=False, pooling="avg")
    assert shapes(pooled, (2, 64, 96, 3))[0].shape == (2, 512)
    with pytest.raises(ValueError, match="H, W >= 32"):
        shapes(base, (2, 16, 16, 3))
    with pytest.raises(ValueError, match="pooling"):
        shapes(models.create("vgg16", include_top=False, pooling="mean"), CIFAR)


def test_lenet_input_handling():
    model, modern_model = models.create("lenet5"), models.create("lenet5", modern=True)
    x28 = jax.random.normal(rkey(0), (2, 28, 28, 1))
    x32 = jnp.pad(x28, ((0, 0), (2, 2), (2, 2), (0, 0)))

    def run(x28, x32):
        variables = model.init(rkey(1), x28)
        return (
            model.apply(variables, x28),
            model.apply(variables, x32),
            model.apply(variables, x32, method="features"),
            model.apply(variables, x32, return_features=True),
            modern_model.apply(variables, x32 * 100, method="features"),
        )

    logits28, logits32, feats, feats2, modern = run_jitted(run, x28, x32)
    np.testing.assert_allclose(logits28, logits32, rtol=1e-6)
    np.testing.assert_array_equal(feats, feats2)
    assert feats.shape == (2, 84)
    # classic tanh: features bounded by 1; modern ReLU (same params): non-negative, unbounded
    assert float(jnp.abs(feats).max()) <= 1.0
    assert float(modern.min()) >= 0.0 and float(modern.max()) > 1.0
    with pytest.raises(ValueError, match="H, W >= 16"):
        shapes(model, (1, 12, 12, 1))
    with pytest.raises(ValueError, match="activation"):
        shapes(models.create("lenet5", activation="gelu"), (1, 32, 32, 1))


def test_local_response_norm_matches_loop():
    x = np.asarray(jax.random.normal(rkey(0), (1, 2, 2, 7))) * 10
    expected = np.empty_like(x)
    for c in range(7):
        window = x[..., max(0, c - 2) : min(7, c + 3)]
        expected[..., c] = x[..., c] / (2.0 + 1e-4 * (window**2).sum(-1)) ** 0.75
    np.testing.assert_allclose(local_response_norm(jnp.asarray(x)), expected, rtol=1e-5)


def test_shortcut_a_subsamples_and_pads():
    x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3)
    y = shortcut_a(x, 8, 2)
    assert y.shape == (2, 3, 3, 8)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0)
    with pytest.raises(ValueError, match="shortcut A"):
        shortcut_a(x, 2, 1)


# ----------------------------------------------------------------------------- residual blocks
def _run_block(block, x, train):
    def run(x):  # one compile for init + apply (eager op-by-op dispatch is slower here)
        variables = block.init(rkey(3), x, train=False)
        if train:
            out, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])
        else:
            out = block.apply(variables, x, train=False)
        return out, variables

    return run_jitted(run, x)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_zero_init_residual_block_is_identity(shortcut, train):
    x = jax.nn.relu(jax.random.normal(rkey(0), (2, 6, 6, 16)))  # post-ReLU input
    same = BasicBlock(16, 1, shortcut=shortcut, zero_init_residual=True)
    out, variables = _run_block(same, x, train)
    np.testing.assert_allclose(out, x, atol=1e-6)
    assert "proj_conv" not in variables["params"]
    # without the zero init the same block is not the identity (the test can fail)
    out, _ = _run_block(BasicBlock(16, 1, shortcut=shortcut), x, train)
    assert float(jnp.abs(out - x).max()) > 1e-2

    # a downsampling block reduces to its shortcut: A parameter-free, B the 1x1 projection
    down = BasicBlock(32, 2, shortcut=shortcut, zero_init_residual=True)
    out, variables = _run_block(down, x, train)
    assert out.shape == (2, 3, 3, 32)
    sub = x[:, ::2, ::2, :]
    if shortcut == "A":
        expected = jnp.pad(sub, ((0, 0), (0, 0), (0, 0), (0, 16)))
    else:
        proj = jnp.einsum("nhwc,cd->nhwd", sub, variables["params"]["proj_conv"]["kernel"][0, 0])
        if train:
            mean, var = proj.mean((0, 1, 2)), proj.var((0, 1, 2))
        else:
            mean, var = 0.0, 1.0
        expected = jax.nn.relu((proj - mean) / jnp.sqrt(var + 1e-5))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_zero_init_bottleneck_is_identity():
    x = jax.nn.relu(jax.random.normal(rkey(0), (2, 5, 5, 64)))
    out, _ = _run_block(Bottleneck(16, zero_init_residual=True), x, False)
    np.testing.assert_allclose(out, x, atol=1e-6)
    out, _ = _run_block(Bottleneck(16), x, False)
    assert float(jnp.abs(out - x).max()) > 1e-2


def test_zero_init_option_reaches_every_block():
    _, variables = shapes(models.create("resnet20", zero_init_residual=True), CIFAR)
    model = models.create("resnet20", zero_init_residual=True)
    real = run_jitted(model.init, rkey(0), jnp.zeros((1, 8, 8, 3)))["params"]
    blocks = [k for k in variables["params"] if k.startswith("stage")]
    assert len(blocks) == 9
    for k in blocks:
        np.testing.assert_array_equal(real[k]["bn2"]["scale"], 0.0)
        np.testing.assert_array_equal(real[k]["bn1"]["scale"], 1.0)


def test_plain_nets_have_no_skip_and_reject_residual_options():
    _, variables = shapes(models.create("plain20"), CIFAR)
    assert not any("proj_conv" in v for v in variables["params"].values() if isinstance(v, dict))
    assert models.create("plain20").residual is False
    with pytest.raises(ValueError, match="zero_init_residual"):
        _run_block(BasicBlock(8, residual=False, zero_init_residual=True), jnp.ones((1, 4, 4, 8)),
                   False)


def test_create_errors():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['shortcut'\] for model 'plain20'"):
        models.create("plain20", shortcut="B")
    with pytest.raises(ValueError, match="unknown option.*'depth'.*accepted options"):
        models.create("resnet20", depth=20)
    with pytest.raises(ValueError, match="unknown option.*'include_top'"):
        models.create("resnet50", include_top=False)
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*resnet20"):
        models.create("resnet21")
    with pytest.raises(ValueError, match="shortcut must be one of"):
        shapes(models.create("resnet20", shortcut="C"), CIFAR)
    names = set(models.available())
    assert {"lenet5", "alexnet_mini", "vgg_mini", "vgg16", "vgg19", "resnet20", "resnet32",
            "resnet56", "plain20", "plain56", "resnet18", "resnet34", "resnet50",
            "mobilenet_v2"} <= names


# ----------------------------------------------------------------------------- one real SGD step
def _first_conv(params):
    for key in ("conv1", "stem_conv", "block1"):
        if key in params:
            sub = params[key]
            return sub["conv1"]["kernel"] if key == "block1" else sub["kernel"]
    raise AssertionError(f"no first conv in {list(params)}")


@pytest.mark.parametrize("name", ["lenet5", "alexnet_mini", "vgg_mini", "resnet20", "plain20"])
def test_one_sgd_step_without_nan_and_gradient_reaches_first_conv(name):
    channels = 1 if name == "lenet5" else 3
    model = models.create(name, num_classes=10)
    x = jax.random.normal(rkey(0), (4, 32, 32, channels))
    y = jnp.array([0, 1, 2, 3])
    tx = optax.sgd(0.05, momentum=0.9)

    def init_and_step(key):  # one compile: init, forward, backward, update
        init_key, dropout_key = jax.random.split(key)
        variables = model.init(init_key, x[:1], train=False)
        params, stats = variables["params"], variables.get("batch_stats", {})

        def loss_fn(p):
            rngs = {"dropout": dropout_key}
            if stats:
                v = {"params": p, "batch_stats": stats}
                logits, new = model.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])
                new = new["batch_stats"]
            else:
                logits, new = model.apply({"params": p}, x, train=True, rngs=rngs), {}
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, new

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        new_params = optax.apply_updates(params, updates)
        return params, stats, new_params, new_stats, loss, grads

    params, stats, new_params, new_stats, loss, grads = run_jitted(init_and_step, rkey(1))
    assert np.isfinite(float(loss)) and abs(float(loss) - math.log(10)) < 3.0
    for tree in (grads, new_params, new_stats):
        assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(tree))
    first = _first_conv(grads)
    assert float(jnp.linalg.norm(first)) > 1e-6, "no gradient reached the first conv layer"
    assert not np.allclose(_first_conv(new_params), _first_conv(params))
    if stats:  # running statistics moved towards the batch statistics
        assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
        moved = [not np.allclose(a, b) for a, b in
                 zip(jax.tree.leaves(new_stats), jax.tree.leaves(stats), strict=True)]
        assert all(moved)


def test_head_is_a_dense_named_head():
    for name in ["lenet5", "alexnet_mini", "vgg_mini", "resnet20", "resnet18"]:
        _, variables = shapes(models.create(name, num_classes=7), (1, 32, 32, 3))
        head = variables["params"]["head"]
        assert head["kernel"].shape[-1] == 7 and head["bias"].shape == (7,)
    assert isinstance(models.create("resnet50"), nn.Module)
