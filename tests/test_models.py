"""Models: registry, parameter counts (by shape only), shapes, determinism, dtypes, summary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models


def test_registry_lists_and_creates():
    assert {"mlp", "cnn3"} <= set(models.available())
    assert isinstance(models.create("cnn3", num_classes=7), models.CNN3)
    assert models.create("mlp", num_classes=3).num_classes == 3


def test_registry_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown model 'nope'.*cnn3"):
        models.create("nope")
    with pytest.raises(ValueError, match="num_classes"):
        models.create("cnn3", num_classes=0)
    with pytest.raises(ValueError, match="unknown option.*'widht'"):
        models.create("cnn3", widht=3)
    with pytest.raises(ValueError, match="already registered"):
        models.register("cnn3")(lambda num_classes: None)


def test_accepted_options_lists_factory_keywords():
    assert "zero_init_residual" in models.accepted_options("resnet20")
    assert "zero_init_residual" not in models.accepted_options("plain20")
    assert "num_classes" not in models.accepted_options("resnet20")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.accepted_options("nope")
    wanted = {"zero_init_residual": True, "bn_momentum": 0.8}
    assert models.supported_options("resnet20", wanted) == wanted
    assert models.supported_options("plain20", wanted) == {"bn_momentum": 0.8}


def test_register_custom_factory():
    name = "tiny_test_factory"

    @models.register(name)
    def factory(num_classes, width=4):
        return models.MLP(num_classes=num_classes, hidden=(width,))

    m = models.create(name, num_classes=2, width=5)
    assert m.hidden == (5,)
    assert name in models.available()


def test_family_members_are_registered_variants():
    """resnet20/32/56, plain20/56, resnet18/34, vgg16/19: one class each, some attributes fixed,
    the listed options left to the caller (positionally too), named and documented."""
    import inspect

    from jaxcnn.models import resnet, vgg

    assert resnet.resnet32.__name__ == "resnet32" and "n=5" in resnet.resnet32.__doc__
    assert list(inspect.signature(vgg.vgg19).parameters) == [
        "num_classes", "include_top", "pooling", "batch_norm", "dropout", "bn_momentum",
        "bn_epsilon", "dtype",
    ]
    m = resnet.resnet56(7, "B", bn_momentum=0.8)
    assert (m.num_classes, m.blocks_per_stage, m.shortcut, m.bn_momentum) == (7, 9, "B", 0.8)
    assert models.create("plain56").residual is False
    assert models.create("vgg19", include_top=False).stages == vgg.VGG19_STAGES
    assert models.create("resnet34").stage_sizes == (3, 4, 6, 3)
    with pytest.raises(TypeError):
        resnet.plain20(zero_init_residual=True)  # not an option of the plain nets
    with pytest.raises(ValueError, match=r"no attribute\(s\) \['depth'\]"):
        models.registry.register_variant("bad_variant", resnet.CifarResNet, "", (), depth=3)


def test_batchnorm_settings_reach_every_block():
    from jaxcnn.models.layers import BatchNormNet

    model = models.create("resnet20", bn_momentum=0.5, bn_epsilon=1e-3)
    assert isinstance(model, BatchNormNet)
    assert model.shared_options() == {
        "bn_momentum": 0.5, "bn_epsilon": 1e-3, "dtype": jnp.float32, "param_dtype": jnp.float32,
    }
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    _, moved = model.apply(variables, x, train=True, mutable=["batch_stats"])
    default = models.create("resnet20", bn_epsilon=1e-3)  # momentum 0.9
    _, moved_default = default.apply(variables, x, train=True, mutable=["batch_stats"])
    # running = m * running + (1 - m) * batch, with the same batch statistics in both (train
    # mode normalises with them): every BatchNorm, in every block, moved 0.5 / 0.1 = 5x as far
    step = jax.tree.map(jnp.subtract, moved["batch_stats"], variables["batch_stats"])
    step_default = jax.tree.map(
        jnp.subtract, moved_default["batch_stats"], variables["batch_stats"]
    )
    for a, b in zip(jax.tree.leaves(step), jax.tree.leaves(step_default), strict=True):
        np.testing.assert_allclose(a, 5 * b, rtol=1e-4, atol=1e-6)
    lite = models.create("efficientnet_lite0", num_classes=3)
    assert (lite.bn_momentum, lite.bn_epsilon) == (0.99, 1e-3)
    assert models.create("mobilenet_v2").bn_momentum == 0.999


def test_cnn3_param_count_exact():
    # convs 287,008 + BN scale/bias 896 + dense 2048*128+128 + 128*10+10 = 551,466
    convs = sum(
        9 * i * o + o for i, o in [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    )
    expected = convs + 2 * (32 + 32 + 64 + 64 + 128 + 128) + 2048 * 128 + 128 + 128 * 10 + 10
    assert expected == 551_466
    counts = models.param_counts(models.create("cnn3"), (1, 32, 32, 3))
    assert counts == {"trainable": 551_466, "non_trainable": 896, "total": 552_362}


def test_mlp_param_count_exact():
    expected = 3072 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert expected == 1_707_274
    variables = models.init_shapes(models.create("mlp"), (2, 32, 32, 3))
    assert set(variables) == {"params"}
    assert models.count_params(variables["params"]) == 1_707_274


def test_count_params_on_arrays_and_shapes():
    tree = {"a": jnp.zeros((2, 3)), "b": [jax.ShapeDtypeStruct((4,), jnp.float32)]}
    assert models.count_params(tree) == 10


@pytest.mark.parametrize("name", ["mlp", "cnn3"])
def test_shapes_eval_deterministic_and_dropout(name):
    model = models.create(name, num_classes=5)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    a = model.apply(variables, x, train=False)
    b = model.apply(variables, x, train=False, rngs={"dropout": jax.random.key(9)})
    assert a.shape == (3, 5) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)  # eval ignores dropout rngs
    mutable = ["batch_stats"] if "batch_stats" in variables else False
    t1 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=mutable)
    t2 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=mutable)
    if mutable:
        (t1, s1), (t2, _) = t1, t2
        assert jax.tree.structure(s1["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    if name == "cnn3":  # dropout: different keys give different outputs in train mode
        assert not np.allclose(t1, t2)
    else:
        np.testing.assert_allclose(t1, a, rtol=1e-6)


def test_cnn3_features_and_bf16():
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    model = models.create("cnn3", num_classes=4)
    variables = model.init(jax.random.key(0), x, train=False)
    feats = model.apply(variables, x, train=False, method="features")
    feats2 = model.apply(variables, x, train=False, return_features=True)
    assert feats.shape == (2, 128)
    np.testing.assert_array_equal(feats, feats2)

    bf = models.create("cnn3", num_classes=4, dtype=jnp.bfloat16)
    vb = bf.init(jax.random.key(0), x, train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(vb))
    logits = bf.apply(variables, x, train=False)
    assert logits.dtype == jnp.float32
    ref = model.apply(variables, x, train=False)
    np.testing.assert_allclose(logits, ref, atol=0.1 * float(jnp.abs(ref).max()) + 0.05)


def test_mlp_features_and_bf16():
    x = jnp.ones((2, 4, 4, 1))
    model = models.create("mlp", num_classes=3, dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).dtype == jnp.float32
    assert model.apply(variables, x, method="features").shape == (2, 256)


def test_summary_table():
    text = models.summary(models.create("cnn3"), (1, 32, 32, 3))
    lines = text.splitlines()
    names = [ln.split()[0] for ln in lines if ln.startswith(("block", "fc", "head"))]
    assert names[:3] == ["block1_conv1", "block1_bn1", "block1_conv2"]  # call order
    assert names[-1] == "head"
    assert "(1, 4, 4, 128)" in text and "(1, 10)" in text
    assert "trainable params:     551,466" in text
    assert "non-trainable params: 896" in text
    with pytest.raises(ValueError, match="input_shape"):
        models.summary(models.create("cnn3"), (32, 32, 3))
