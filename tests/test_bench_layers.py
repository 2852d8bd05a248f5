"""``python -m experiments.bench layers``: traced conv shapes, FLOPs, gradients, shares, the CLI
(and the dispatcher listing every benchmark)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from experiments.bench import layers, layers_timing, layers_trace
from experiments.bench.__main__ import build_parser, main
from jaxcnn.flops import function_flops
from jaxcnn.ops import backend
from jaxcnn.ops.backend import BACKENDS

CNN3_CONVS = [(32, 32, 3, 32), (32, 32, 32, 32), (16, 16, 32, 64), (16, 16, 64, 64),
              (8, 8, 64, 128), (8, 8, 128, 128)]


def _hwio(group):
    s = group.shape
    return (s.h, s.w, s.c_in, s.c_out)


def test_cnn3_convs_and_parts_are_traced():
    model = layers.make_model("cnn3", {})
    with backend.use("fast"):
        groups, parts = layers_trace.trace_model(model, (2, 32, 32, 3))
    assert [_hwio(g) for g in groups] == CNN3_CONVS
    assert [g.count for g in groups] == [1] * 6
    assert groups[0].names == ["block1_conv1"]
    assert [g.reads_data for g in groups] == [True] + [False] * 5  # only the first reads data
    for g in groups:
        s = g.shape
        assert (s.n, s.kh, s.kw, s.stride, s.pads, s.impl) == (2, 3, 3, (1, 1), ((1, 1), (1, 1)),
                                                               "fast")
        assert (s.ho, s.wo) == (s.h, s.w)  # SAME, stride 1
    counts = {}
    for p in parts:
        counts.setdefault(p.kind, []).append((p.in_shape[1:], p.count))
    # backend "fast": FusedBatchNorm (BatchNorm+ReLU), then the reshape max pool.
    assert counts["batchnorm"] == [((32, 32, 32), 2), ((16, 16, 64), 2), ((8, 8, 128), 2)]
    assert counts["maxpool"] == [((32, 32, 32), 1), ((16, 16, 64), 1), ((8, 8, 128), 1)]
    assert [c for _, c in counts["dropout"]] == [1, 1, 1, 1]
    assert counts["dense"] == [((2048,), 1), ((128,), 1)]


def test_resnet20_groups_strided_and_1x1_convs():
    model = layers.make_model("resnet20", {})
    with backend.use("lax"):
        groups, parts = layers_trace.trace_model(model, (2, 32, 32, 3))
    assert sum(g.count for g in groups) == 19
    assert len({g.shape for g in groups}) == len(groups) == 6
    strided = [(_hwio(g), g.shape.ho) for g in groups if g.shape.stride == (2, 2)]
    assert strided == [((32, 32, 16, 32), 16), ((16, 16, 32, 64), 8)]
    assert {g.shape.impl for g in groups} == {"lax"}
    assert sum(p.count for p in parts if p.kind == "batchnorm") == 19
    # shortcut B adds the two 1x1 stride-2 projections
    with backend.use("lax"):
        groups_b, _ = layers_trace.trace_model(
            layers.make_model("resnet20", {"resnet20": {"shortcut": "B"}}), (2, 32, 32, 3))
    ones = [g for g in groups_b if g.shape.kh == 1]
    assert [(_hwio(g), g.shape.pads) for g in ones] == [
        ((32, 32, 16, 32), ((0, 0), (0, 0))), ((16, 16, 32, 64), ((0, 0), (0, 0)))]
    assert sum(g.count for g in groups_b) == 21


def test_flops_match_the_formula_and_xla():
    s = layers_trace.ConvShape(4, 10, 10, 3, 5, 3, 3, (1, 1), ((0, 0), (0, 0)), 8, 8, "lax")
    assert s.flops == 2 * 4 * 8 * 8 * 3 * 3 * 3 * 5

    def conv(x, k):
        return lax.conv_general_dilated(x, k, s.stride, s.pads,
                                        dimension_numbers=layers_timing._DN)

    x = jax.ShapeDtypeStruct((4, 10, 10, 3), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 3, 5), jnp.float32)
    assert function_flops(conv, x, k) == pytest.approx(s.flops)  # VALID: no padded taps


@pytest.mark.parametrize("impl", layers_timing.CONV_KERNELS)
def test_direction_fns_are_the_conv_and_its_two_gradients(impl):
    s = layers_trace.ConvShape(2, 7, 7, 3, 4, 3, 3, (2, 2), ((1, 1), (1, 1)), 4, 4, impl)
    x, k, g = layers_timing.conv_inputs(s, seed=1)
    fns = layers_timing.conv_direction_fns(s)

    def ref(x, k):
        return lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=layers_timing._DN)

    dx_ref, dk_ref = jax.grad(lambda x, k: jnp.sum(ref(x, k) * g), argnums=(0, 1))(x, k)
    np.testing.assert_allclose(fns["fwd"](x, k, g), ref(x, k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fns["dx"](x, k, g), dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fns["dk"](x, k, g), dk_ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="conv impl"):
        layers_timing.conv_fn("auto")  # concrete kernels only: resolve() first


def test_conv_row_shares_leave_out_dx_of_the_data_layer():
    s = layers_trace.ConvShape(8, 32, 32, 3, 32, 3, 3, (1, 1), ((1, 1), (1, 1)), 32, 32, "fast")
    ms = {"fwd": 1.0, "dx": 2.0, "dk": 4.0}
    row = layers_timing.conv_row(layers_trace.LayerGroup(s, ["a", "b"]), ms, peak_gflops=10.0)
    assert row["count"] == 2 and row["step_ms"] == pytest.approx(2 * 7.0)
    assert row["gflops_per_s"]["fwd"] == pytest.approx(s.flops / 1e6)
    assert row["pct_peak"]["dk"] == pytest.approx(100 * s.flops / 4e6 / 10.0)
    data = layers_timing.conv_row(layers_trace.LayerGroup(s, ["a"], reads_data=True), ms,
                                  peak_gflops=10.0)
    assert data["in_step"] == ["fwd", "dk"] and data["step_ms"] == pytest.approx(5.0)


def test_cpu_info_reads_the_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512f sse\n")
    info = layers_timing.cpu_info(str(f))
    assert info["model"] == "Test CPU" and info["cores"] >= 1
    assert info["flags"] == {"avx2": True, "avx512f": True, "avx512_bf16": False}
    missing = layers_timing.cpu_info(str(tmp_path / "missing"))
    assert missing["flags"] == dict.fromkeys(layers_timing.CPU_FLAGS)


def test_parser_defaults_and_backend_choices():
    args = build_parser().parse_args(["layers"])
    assert args.func is layers.command
    assert args.models == ("cnn3", "resnet20") and args.batch_size == 128
    assert args.backend == "auto" and args.json is None
    assert args.gemm_sizes == (1024, 2048, 4096)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["layers"]
    choice = next(a for a in sub._actions if a.dest == "backend")
    assert tuple(choice.choices) == BACKENDS
    with pytest.raises(ValueError, match="--backend"):
        main(["layers", "--model-option", "conv_impl=lax"])
    with pytest.raises(ValueError, match="unknown model"):
        main(["layers", "--models", "nope"])


def test_module_run_lists_every_benchmark():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = [sys.executable, "-m", "experiments.bench"]
    proc = subprocess.run(run + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("ops", "train", "layers", "host"):
        assert f"    {name} " in proc.stdout, name
    proc = subprocess.run(run + ["layers", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--backend" in proc.stdout and "--gemm-sizes" in proc.stdout


def test_tiny_cli_run_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "layers.json"
    rc = main(["layers", "--models", "cnn3", "--batch-size", "8", "--repeats", "1",
               "--steps", "1", "--warmup", "1", "--gemm-sizes", "64", "--backend", "fast",
               "--model-option", "filters=(8,)", "--model-option", "dropouts=(0.2,)",
               "--model-option", "dense=16", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("peak:", "GFLOP/s", "avx512f", "jax ", "layer", "fwd ms", "dx ms", "dk ms",
                 "GF/s", "%pk", "ms x n", "step%", "train step", "all convs", "rest of step",
                 "BatchNorm+ReLU", "optimizer update", "unaccounted", "block1_conv2"):
        assert word in text, word
    r = json.loads(out.read_text())
    assert set(r) == {"meta", "peak", "models"}
    assert r["meta"]["jaxcnn_backend"] == {"asked": "fast", "resolved": "fast"}
    assert r["meta"]["batch_size"] == 8
    assert r["peak"]["gflops"] > 0 and r["peak"]["size"] == 64
    m = r["models"]["cnn3"]
    assert m["conv_kernels"] == ["fast"]
    assert [row["in"] + [row["out"][-1]] for row in m["layers"]] == [[32, 32, 3, 8], [32, 32, 8, 8]]
    for row in m["layers"]:
        assert set(row["ms"]) == {"fwd", "dx", "dk"} and min(row["ms"].values()) > 0
        assert row["gflop"] == pytest.approx(2 * 8 * 32 * 32 * 9 * row["in"][2] * 8 / 1e9)
    assert m["step_ms"] > 0
    assert m["conv_ms"] + m["rest_ms"] == pytest.approx(m["step_ms"])
    assert m["conv_share"] + m["rest_share"] == pytest.approx(1.0)
    assert sum(row["step_share"] for row in m["layers"]) == pytest.approx(m["conv_share"])
    assert set(m["rest_parts"]) == {"batchnorm", "maxpool", "dropout", "dense", "optimizer",
                                    "augment", "host"}
    parts_ms = sum(p["ms"] for p in m["rest_parts"].values())
    assert m["unaccounted_ms"] == pytest.approx(m["rest_ms"] - parts_ms)
    assert m["recipe"] == {"optimizer": "sgd", "augment": True}
