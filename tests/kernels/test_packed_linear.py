"""Every implementation of tritium::packed_linear equals the reference op."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tritium.kernels import (
    bit_planes,
    cpu_kernel_status,
    load_cpu_kernel,
    packed_linear,
    packed_linear_reference,
    planes_available,
)
from tritium.kernels import triton_kernels
from tritium.pack import pack_quantized
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight

GRIDS = [
    TernaryGrid("absmean", group="channel"),
    TernaryGrid("twn", group=32, ragged_groups=True),
    TernaryGrid("dlt", group=16, ragged_groups=True),
    TernaryGrid("dlt", group="tensor"),
    UniformGrid(2, group=32, ragged_groups=True),
    UniformGrid(3, group=24, symmetric=True, ragged_groups=True),
    UniformGrid(4, group=128, ragged_groups=True),
    UniformGrid(8, group="channel"),
]


def _args(out, in_features, grid, layout="base3", seed=0, scale_dtype="float16"):
    w = torch.randn(out, in_features, generator=torch.Generator().manual_seed(seed))
    qw = quantize_weight(w, grid)
    if qw.shift is not None:  # RTN leaves DLT's shift at zero, which would leave the γ·Σx term untested
        qw.shift = torch.randn(qw.shift.shape, generator=torch.Generator().manual_seed(seed + 7)).half().float()
    if scale_dtype == "bfloat16":  # the methods round to fp16 values; bf16 storage needs bf16 values
        qw.scale, qw.shift = qw.scale.bfloat16().float(), None if qw.shift is None else qw.shift.bfloat16().float()
    pw = pack_quantized(qw, ternary_layout=layout, scale_dtype=scale_dtype)
    return qw, (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)


def _tolerance(dtype):
    # The kernels and the reference both compute in fp32 and round once to the input's dtype:
    # they differ by the summation order, then at most about one unit of that dtype's last place.
    return {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-3, atol=2e-3),
            torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}[dtype]


def test_reference_is_x_times_dequantized_weight():
    qw, args = _args(13, 70, TernaryGrid("dlt", group=16, ragged_groups=True))
    x = torch.randn(3, 70)
    torch.testing.assert_close(packed_linear_reference(x, *args), x @ qw.dequantize().T, rtol=1e-6, atol=1e-6)


def test_cpu_kernel_builds_here():
    assert load_cpu_kernel(), f"the C++ kernel did not build: {cpu_kernel_status()['error']}"


def test_ternary_op_is_scale_times_trit_product_plus_shift_times_input_sum():
    """α·(x·Tᵀ) + γ·Σx per group, written out from the codes, not through the packed weight."""
    load_cpu_kernel()
    grid = TernaryGrid("dlt", group=16, ragged_groups=True)
    qw, args = _args(13, 70, grid)
    trits, alpha, gamma = qw.codes.float(), qw.scale.float(), qw.shift.float()
    assert bool((gamma != 0).any()) and bool((trits == -1).any()) and bool((trits == 1).any())
    x = torch.randn(3, 70)
    want = torch.zeros(3, 13)
    for g, start in enumerate(range(0, 70, 16)):
        xg, tg = x[:, start:start + 16], trits[:, start:start + 16]
        want += alpha[:, g] * (xg @ tg.T) + gamma[:, g] * xg.sum(1, keepdim=True)
    for rows in (1, 3):  # the lookup path, then through the reference
        torch.testing.assert_close(packed_linear(x[:rows], *args), want[:rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_linear_reference(x, *args), want, rtol=1e-5, atol=1e-5)
    if planes_available():
        planes = bit_planes(args[0], args[4], args[5], args[6])
        torch.testing.assert_close(packed_linear(x, *args, planes), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 7])  # the lookup table, then decode + GEMM
def test_cpu_kernel_turns_an_invalid_base3_byte_into_nan_not_a_number(rows):
    # 5 trits fill only 243 of a byte's 256 values; a byte past them is corruption, and the op called
    # directly (no load-time checks in between) must not return plausible numbers for it.
    load_cpu_kernel()
    _, args = _args(6, 40, TernaryGrid("absmean", group="channel"))
    packed = args[0].clone()
    packed[2, 0, 3] = 250
    corrupt = (packed, *args[1:])
    x = torch.randn(rows, 40)
    got = packed_linear(x, *corrupt)
    assert torch.isnan(got[:, 2]).all()
    healthy = [r for r in range(6) if r != 2]
    torch.testing.assert_close(got[:, healthy], packed_linear_reference(x, *args)[:, healthy], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="corrupt"):
        packed_linear_reference(x, *corrupt)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.describe())
@pytest.mark.parametrize("rows", [1, 3, 7, 64])  # 1-4 rows take the lookup path, more the decode + GEMM path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_kernel_matches_reference(grid, rows, dtype):
    load_cpu_kernel()
    qw, args = _args(37, 133, grid, seed=rows)
    x = torch.randn(2, rows, 133).to(dtype)
    got, want = packed_linear(x, *args), packed_linear_reference(x, *args)
    assert got.shape == (2, rows, 37) and got.dtype == dtype
    torch.testing.assert_close(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.describe())
@pytest.mark.parametrize("scale_dtype", ["bfloat16", "float32"])
def test_cpu_kernel_reads_bf16_and_fp32_scales(grid, scale_dtype):
    # The C++ kernel reads the group parameters in their stored dtype: every path must read each one right.
    load_cpu_kernel()
    _, args = _args(37, 133, grid, seed=3, scale_dtype=scale_dtype)
    assert args[1].dtype == getattr(torch, scale_dtype)
    planes = bit_planes(args[0], args[4], args[5], args[6]) if planes_available() and args[4] <= 16 else None
    for rows in (1, 7):
        x = torch.randn(rows, 133)
        want = packed_linear_reference(x, *args)
        torch.testing.assert_close(packed_linear(x, *args), want, **_tolerance(torch.float32))
        if planes is not None:
            torch.testing.assert_close(packed_linear(x, *args, planes), want, **_tolerance(torch.float32))


@pytest.mark.skipif(not planes_available(), reason="the CPU has no AVX-512: the bit-plane path is not built")
@pytest.mark.parametrize("grid", [g for g in GRIDS if getattr(g, "bits", 0) != 8], ids=lambda g: g.describe())
@pytest.mark.parametrize("layout", ["base3", "2bit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_bit_plane_path_matches_reference(grid, layout, dtype):
    _, args = _args(37, 133, grid, layout=layout)
    planes = bit_planes(args[0], args[4], args[5], args[6])
    # up to 32 rows take the bit planes (1 and 4 also have a lookup path without them), more decode + GEMM
    for rows in (1, 4, 20, 33):
        x = torch.randn(rows, 133).to(dtype)
        torch.testing.assert_close(packed_linear(x, *args, planes), packed_linear_reference(x, *args),
                                   **_tolerance(dtype))


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 40), in_features=st.integers(1, 300), group=st.sampled_from([1, 5, 7, 32, 100, "channel"]),
       kind=st.sampled_from(["base3", "2bit", "dlt", "u2", "u3", "u4"]), rows=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_cpu_kernel_matches_reference_on_random_shapes(out, in_features, group, kind, rows, seed):
    load_cpu_kernel()
    grid = (TernaryGrid("dlt" if kind == "dlt" else "absmean", group=group, ragged_groups=True) if kind[0] != "u"
            else UniformGrid(int(kind[1]), group=group, ragged_groups=True))
    _, args = _args(out, in_features, grid, layout="2bit" if kind == "2bit" else "base3", seed=seed)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(seed + 1))
    want = packed_linear_reference(x, *args)
    torch.testing.assert_close(packed_linear(x, *args), want, rtol=1e-4, atol=1e-4)
    if planes_available():
        planes = bit_planes(args[0], args[4], args[5], args[6])
        torch.testing.assert_close(packed_linear(x, *args, planes), want, rtol=1e-4, atol=1e-4)


def test_ops_reject_mismatched_shapes():
    load_cpu_kernel()
    _, args = _args(8, 64, TernaryGrid("absmean", group=32))
    with pytest.raises(RuntimeError, match="expects 64"):
        packed_linear(torch.randn(1, 63), *args)
    bad = (args[0][:, :, :-1],) + args[1:]
    with pytest.raises(RuntimeError, match="do not match"):
        packed_linear(torch.randn(1, 64), *bad)
    if planes_available():
        wrong_planes = bit_planes(args[0][:, :1], args[4], 32, 32)  # one group where the layer has two
        with pytest.raises(RuntimeError, match="kernel_layout"):
            packed_linear(torch.randn(1, 64), *args, wrong_planes)


def test_meta_tensors_give_the_output_shape():
    _, args = _args(8, 64, TernaryGrid("dlt", group=32))
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    out = torch.ops.tritium.packed_linear(torch.empty(5, 64, device="meta"), *meta)
    assert out.shape == (5, 8) and out.device.type == "meta"


def _fallback_in_fresh_interpreter(grid: str, rows: int, checks: str, env: dict) -> None:
    """Run two packed_linear calls in a fresh interpreter under ``env``, record the CPU-kernel warnings as
    ``msgs``, check they equal the reference, then run ``checks``."""
    code = textwrap.dedent("""
        import warnings, torch
        from tritium.kernels import packed_linear, packed_linear_reference, cpu_kernel_status, planes_available
        from tritium.pack import pack_quantized
        from tritium.quant import TernaryGrid, quantize_weight
        pw = pack_quantized(quantize_weight(torch.randn(6, 20), GRID))
        args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
        x = torch.randn(ROWS, 20)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = packed_linear(x, *args)
            b = packed_linear(x, *args)
        msgs = [str(w.message) for w in caught if "CPU kernel" in str(w.message)]
        assert torch.equal(a, packed_linear_reference(x, *args)) and torch.equal(a, b)
    """).replace("GRID", grid).replace("ROWS", str(rows)) + textwrap.dedent(checks) + "\nprint('ok')\n"
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_no_compiler_falls_back_with_one_warning(tmp_path):
    # A fresh interpreter whose compiler does not exist: the op still works, through the reference.
    _fallback_in_fresh_interpreter('TernaryGrid("dlt", group=8, ragged_groups=True)', 2, """
        assert len(msgs) == 1, msgs
        assert "reference" in msgs[0] and "compiler" in msgs[0]
        assert not cpu_kernel_status()["loaded"]
    """, {"CXX": str(tmp_path / "no-such-compiler"), "CC": str(tmp_path / "no-such-cc"),
          "TRITIUM_CACHE": str(tmp_path / "cache")})


def test_disabled_kernel_falls_back_with_one_warning(tmp_path):
    _fallback_in_fresh_interpreter('TernaryGrid("absmean", group=8, ragged_groups=True)', 1, """
        assert not planes_available()
        assert len(msgs) == 1, msgs
        assert "TRITIUM_DISABLE_CPU_KERNEL" in msgs[0] and "reference" in msgs[0]
        status = cpu_kernel_status()
        assert not status["loaded"] and status["error"] == "disabled by TRITIUM_DISABLE_CPU_KERNEL"
    """, {"TRITIUM_DISABLE_CPU_KERNEL": "1", "TRITIUM_CACHE": str(tmp_path / "cache")})
    assert not (tmp_path / "cache").exists()  # nothing was compiled


@pytest.mark.skipif(not triton_kernels.AVAILABLE, reason="triton is not installed")
def test_triton_kernel_matches_reference_in_the_interpreter():
    # TRITON_INTERPRET runs the kernel's own code on CPU tensors; it must be set before triton loads.
    code = textwrap.dedent("""
        import torch
        from tritium.kernels.triton_kernels import packed_linear_triton
        from tritium.kernels import packed_linear_reference
        from tritium.pack import pack_quantized
        from tritium.quant import TernaryGrid, UniformGrid, quantize_weight
        cases = [(TernaryGrid("absmean", group="channel"), "base3", 1), (TernaryGrid("dlt", group=16, ragged_groups=True), "2bit", 3),
                 (TernaryGrid("twn", group=7, ragged_groups=True), "base3", 5), (UniformGrid(4, group=32, ragged_groups=True), "base3", 2),
                 (UniformGrid(3, group=24, symmetric=True, ragged_groups=True), "base3", 17)]
        for i, (grid, layout, rows) in enumerate(cases):
            torch.manual_seed(i)
            pw = pack_quantized(quantize_weight(torch.randn(35, 77), grid), ternary_layout=layout)
            args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                x = torch.randn(rows, 77).to(dtype)
                tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
                torch.testing.assert_close(packed_linear_triton(x, *args), packed_linear_reference(x, *args), rtol=tol, atol=tol)
        # bf16 and fp32 group parameters, a DLT shift with real values
        qw = quantize_weight(torch.randn(35, 77), TernaryGrid("dlt", group=16, ragged_groups=True))
        qw.scale, qw.shift = qw.scale.bfloat16().float(), torch.randn(qw.shift.shape).bfloat16().float()
        for scale_dtype in ("bfloat16", "float32"):
            pw = pack_quantized(qw, scale_dtype=scale_dtype)
            args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
            x = torch.randn(4, 77)
            want = packed_linear_reference(x, *args)
            torch.testing.assert_close(packed_linear_triton(x, *args), want, rtol=1e-4, atol=1e-4)
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("rows,out_features,in_features", [(1, 37, 576), (3, 100, 19), (1, 512, 1536), (6, 20, 40)])
def test_linear_half_weight_equals_fp32_math_on_the_fp16_weights(rows, out_features, in_features):
    from tritium.kernels import linear_half_weight

    g = torch.Generator().manual_seed(rows * out_features + in_features)
    weight = torch.randn(out_features, in_features, generator=g).half()
    x = torch.randn(rows, in_features, generator=g)
    y = linear_half_weight(x, weight)
    assert y.dtype == torch.float32 and y.shape == (rows, out_features)
    torch.testing.assert_close(y, x @ weight.float().t(), rtol=1e-4, atol=1e-4)  # fp16 rounding of x would be ~1e-3
    with pytest.raises(RuntimeError, match="features"):
        linear_half_weight(torch.randn(1, in_features + 1), weight)
    with pytest.raises(RuntimeError, match="float16"):
        linear_half_weight(x, weight.float())
