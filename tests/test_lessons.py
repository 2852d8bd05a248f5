"""The lessons (experiments.conv_math, experiments.from_scratch) and the bench baseline.

Fast by design: tiny data subsets, a handful of steps, low-dpi figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import conv_math, from_scratch
from experiments.bench import common as bench_common
from experiments.bench import ops as bench_ops
from experiments.bench.__main__ import build_parser as bench_parser
from jaxcnn import ops

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# jitted once here: eager dispatch of the reference conv's many small ops is slow on CPU
forward = jax.jit(from_scratch.forward, static_argnames=("conv_fn", "return_stages"))
loss_fn = jax.jit(from_scratch.loss_fn, static_argnames=("conv_fn",))


# --------------------------------------------------------------------------------------------
# from_scratch: the model built from the reference ops
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return from_scratch.load_digits_split(seed=0)


def test_digits_split_is_stratified_and_disjoint(digits):
    x_tr, y_tr, x_te, y_te = digits
    assert x_tr.shape[1:] == (8, 8, 1) and x_tr.dtype == np.float32
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == 360
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # every class present in both parts, in the same proportion (within one image)
    tr_counts, te_counts = np.bincount(y_tr, minlength=10), np.bincount(y_te, minlength=10)
    assert np.all(np.abs(te_counts - 0.2 * (tr_counts + te_counts)) <= 1)


def test_forward_shapes_and_param_count():
    params = from_scratch.init_params(jax.random.key(0))
    x = jnp.zeros((5, 8, 8, 1))
    logits, stages = forward(params, x, return_stages=True)
    assert logits.shape == (5, 10)
    assert {k: v.shape for k, v in stages.items()} == {
        "conv1+relu": (5, 8, 8, 16), "pool1": (5, 4, 4, 16),
        "conv2+relu": (5, 4, 4, 32), "pool2": (5, 2, 2, 32)}
    # 3*3*1*16+16 + 3*3*16*32+32 + 128*10+10
    assert from_scratch.count_params(params) == 160 + 4640 + 1290
    trace = from_scratch.shape_trace(params)
    assert [r[0] for r in trace][1:5] == list(from_scratch.STAGES)
    assert sum(r[2] for r in trace) == 6090


def test_reference_and_lax_networks_agree(digits):
    params = from_scratch.init_params(jax.random.key(1))
    x = jnp.asarray(digits[0][:16])
    ref = forward(params, x)
    lax_ = forward(params, x, conv_fn=ops.conv)
    assert float(jnp.max(jnp.abs(ref - lax_))) <= 1e-5 * float(jnp.max(jnp.abs(lax_)))


def test_hand_written_gradients_equal_jax_grad_through_lax(digits):
    params = from_scratch.init_params(jax.random.key(2))
    x, y = jnp.asarray(digits[0][:32]), jnp.asarray(digits[1][:32])
    check = from_scratch.gradient_check(params, x, y)
    assert check["max_abs_grad"] > 0
    assert check["relative"] <= 1e-5, check
    assert set(check["per_param"]) == {"conv1/kernel", "conv1/bias", "conv2/kernel",
                                       "conv2/bias", "dense/kernel", "dense/bias"}


def test_gradient_check_can_fail(digits, monkeypatch):
    """A wrong backward pass must be caught: scale the kernel gradient of conv_reference."""
    real = ops.conv_reference

    @jax.custom_vjp
    def broken(x, k):
        return real(x, k, padding="SAME")

    def fwd(x, k):
        return broken(x, k), (x, k)

    def bwd(res, g):
        _, vjp = jax.vjp(lambda a, b: real(a, b, padding="SAME"), *res)
        gx, gk = vjp(g)
        return gx, 1.5 * gk

    broken.defvjp(fwd, bwd)
    monkeypatch.setattr(ops, "conv_reference", lambda x, k, padding="SAME": broken(x, k))
    params = from_scratch.init_params(jax.random.key(2))
    check = from_scratch.gradient_check(params, jnp.asarray(digits[0][:8]),
                                        jnp.asarray(digits[1][:8]))
    assert check["relative"] > 1e-3


def test_loss_decreases_on_a_small_subset(digits):
    import optax

    x, y = jnp.asarray(digits[0][:64]), jnp.asarray(digits[1][:64])
    params = from_scratch.init_params(jax.random.key(3))
    opt = optax.adam(3e-3)
    state = opt.init(params)
    step = from_scratch.make_train_step(opt)
    first = float(loss_fn(params, x, y))
    for _ in range(15):
        params, state, _ = step(params, state, x, y)
    last = float(loss_fn(params, x, y))
    assert np.isfinite(last) and last < 0.7 * first, (first, last)


# --------------------------------------------------------------------------------------------
# conv_math: the computational helpers and the figures
# --------------------------------------------------------------------------------------------


def test_worked_example_is_40_not_30():
    ex = conv_math.worked_example()
    np.testing.assert_allclose(ex["output"], [[0, 40, 40]] * 3)
    np.testing.assert_allclose(ex["true_conv"], [[0, -40, -40]] * 3)
    assert ex["cell_01"] == 40


def test_stride_padding_table_matches_formula():
    rows = conv_math.stride_padding_table(75, 64, 3)
    assert len(rows) == 6
    for r in rows:
        assert r["formula"] == r["measured"]
    by = {(r["padding"], r["stride"]): r["measured"] for r in rows}
    assert by[("VALID", 1)] == (73, 62) and by[("SAME", 1)] == (75, 64)
    assert by[("VALID", 2)] == (37, 31) and by[("SAME", 2)] == (38, 32)
    assert by[("VALID", 3)] == (25, 21) and by[("SAME", 3)] == (25, 22)
    for desc, got, want in conv_math.course_size_examples():
        assert got == want, desc


def test_receptive_field_rows():
    rf = conv_math.receptive_fields()
    assert [r["rf"] for r in rf][:6] == [3, 5, 6, 10, 14, 16]
    assert rf[-1]["jump"] == 16


def test_param_rows():
    rows = {(a, b): c for a, b, c in conv_math.param_count_rows()}
    assert rows[("224x224x3 input", "Dense, 512 units")] == 224 * 224 * 3 * 512 + 512
    assert rows[("32x32x3 input", "Conv 3x3, 64 filters")] == 3 * 3 * 3 * 64 + 64
    # weight sharing: the conv layer does not depend on the image size
    assert (rows[("224x224x3 input", "Conv 5x5, 64 filters")]
            == rows[("32x32x3 input", "Conv 5x5, 64 filters")])


def test_photo_is_a_real_rgb_image():
    photo = conv_math.load_photo()
    assert photo.ndim == 3 and photo.shape[-1] == 3 and photo.dtype == np.uint8
    assert photo.shape[0] > 100 and photo.std() > 10


def test_conv_math_main_writes_pngs(tmp_path, capsys):
    assert conv_math.main(["--visuals-dir", str(tmp_path), "--dpi", "40"]) == 0
    out = capsys.readouterr().out
    assert "ERRATUM" in out and "40" in out
    for name in conv_math.FIGURES:
        p = tmp_path / name
        assert p.exists(), name
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_MAGIC, name


# --------------------------------------------------------------------------------------------
# bench: the numpy four-loop baseline is a real convolution
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_numpy_loop_conv_matches_ops_conv(padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    got = bench_ops.numpy_conv_loops(x, k, padding)
    want = np.asarray(ops.conv(x, k, padding=padding))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bench_parser_has_ops_subcommand():
    args = bench_parser().parse_args(["ops", "--repeats", "2", "--json"])
    assert args.command == "ops" and args.repeats == 2 and args.json


def test_bench_table_and_interleaved_timer():
    fns = {"a": jax.jit(lambda v: v + 1.0), "b": jax.jit(lambda v: v * 2.0)}
    calls = []
    times = bench_common.time_interleaved(fns, (jnp.ones(4),), repeats=3,
                                   extra=("loops", lambda: calls.append(1), 2))
    assert set(times) == {"a", "b", "loops"} and len(calls) == 2
    assert all(t >= 0 for t in times.values())
    fake = {
        "device": "cpu", "backend": "cpu", "repeats": 3,
        "layer": {"batch": 128, "hw": 32, "c_in": 32, "c_out": 32, "kernel": 3,
                  "padding": "SAME", "dtype": "float32"},
        "ms": {"lax conv forward": 10.0, "conv_reference forward": 40.0},
        "ratio_vs_lax": {"lax conv forward": 1.0, "conv_reference forward": 4.0},
        "numpy_loops": {"problem": {"batch": 2, "hw": 16, "c_in": 8, "c_out": 8},
                        "ms": 100.0, "ns_per_output": 24414.0},
        "conv_reference_ns_per_output": 9.5, "speedup_per_output_vs_numpy_loops": 2570.0,
        "bars": {"within 3x": False, ">= 1000x": True},
    }
    table = bench_ops.format_ops(fake)
    assert "[FAIL] within 3x" in table and "[PASS] >= 1000x" in table and "4.00" in table
