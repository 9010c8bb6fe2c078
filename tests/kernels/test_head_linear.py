"""The head ops' C++ kernel equals its reference (dequantize, then F.linear) on every path the CPU can run."""

import pytest
import torch
import torch.nn.functional as F

from tritium.kernels import head_cpu
from tritium.kernels.head_cpu import HeadKernelError, best_isa, forced_head_isa, head_isa, load_head_kernel
from tritium.kernels.head_ops import block_linear, block_linear_reference, linear_16bit, linear_16bit_reference
from tritium.pack.blocks import quantize_blocks
from tritium.utils import hardware

PATHS = [isa for isa in head_cpu.ISAS if isa == "portable" or head_cpu.ISA_FLAGS[isa] <= hardware.cpu_flags()]


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    assert load_head_kernel(), f"the head kernel did not build: {head_cpu.head_kernel_status()['error']}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tritium::block_linear", "CPU")


def _tolerance(dtype):
    # both sides compute in fp32 and round once to x's dtype; only the summation order differs
    return {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}[dtype]


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("kind, bits", [("q8_0", 8), ("q4_0", 4)])
@pytest.mark.parametrize("out, cols, rows", [(1, 32, 1), (37, 96, 1), (130, 576, 3), (64, 160, 8), (33, 64, 9),
                                             (50, 128, 70)])  # 9 and more rows: decoded tiles + GEMM
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_linear_matches_dequantize_then_linear(isa, kind, bits, out, cols, rows, dtype):
    generator = torch.Generator().manual_seed(out * cols + rows)
    weight = quantize_blocks(torch.randn(out, cols, generator=generator), kind)
    x = torch.randn(2, rows, cols, generator=generator).to(dtype)
    with forced_head_isa(isa):
        assert head_isa() == isa
        got = block_linear(x, weight.codes, weight.scale, bits)
    want = F.linear(x.float(), weight.dequantize()).to(dtype)
    assert got.shape == (2, rows, out) and got.dtype == dtype
    torch.testing.assert_close(got, want, **_tolerance(dtype))
    torch.testing.assert_close(block_linear_reference(x, weight.codes, weight.scale, bits), want, **_tolerance(dtype))


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("weight_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out, cols, rows", [(3, 7, 1), (41, 99, 2), (129, 576, 1), (20, 40, 12)])
def test_16bit_linear_matches_fp32_math_on_the_16bit_values(isa, weight_dtype, out, cols, rows):
    generator = torch.Generator().manual_seed(out + cols)
    weight = torch.randn(out, cols, generator=generator).to(weight_dtype)
    x = torch.randn(rows, cols, generator=generator)
    with forced_head_isa(isa):
        got = linear_16bit(x, weight)
    torch.testing.assert_close(got, F.linear(x, weight.float()), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(linear_16bit_reference(x, weight), F.linear(x, weight.float()))


def test_the_paths_really_differ_in_summation_yet_agree():
    """Guards against a dispatch that ignores the forced path: the portable and vector sums round differently."""
    if len(PATHS) < 2:
        pytest.skip("this CPU runs only the portable path")
    weight = quantize_blocks(torch.randn(256, 4096, generator=torch.Generator().manual_seed(0)), "q8_0")
    x = torch.randn(1, 4096, generator=torch.Generator().manual_seed(1))
    results = {}
    for isa in PATHS:
        with forced_head_isa(isa):
            results[isa] = block_linear(x, weight.codes, weight.scale, 8)
    assert not torch.equal(results["portable"], results[PATHS[-1]])
    for value in results.values():
        torch.testing.assert_close(value, results["portable"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("flags, isa", [({"avx2", "fma", "f16c", "avx512f", "avx512bw"}, "avx512"),
                                        ({"avx2", "fma", "f16c"}, "avx2"), ({"avx2", "fma"}, "portable"),
                                        (set(), "portable")])
def test_best_isa_follows_the_cpu_flags(flags, isa, monkeypatch):
    monkeypatch.setattr(head_cpu.platform, "machine", lambda: "x86_64")
    assert best_isa(frozenset(flags)) == isa


def test_a_path_the_cpu_lacks_is_refused_and_the_loaded_path_is_the_best_one(monkeypatch):
    assert head_isa() == best_isa()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"sse2"}))
    with pytest.raises(HeadKernelError, match="lacks"):
        head_cpu.set_head_isa("avx2")
    with pytest.raises(HeadKernelError, match="unknown"):
        head_cpu.set_head_isa("neon")


def test_kernel_rejects_mismatched_inputs():
    weight = quantize_blocks(torch.randn(4, 64), "q4_0")
    with pytest.raises(RuntimeError, match="features"):
        block_linear(torch.randn(1, 32), weight.codes, weight.scale, 4)
    with pytest.raises(RuntimeError, match="uint8"):
        block_linear(torch.randn(1, 64), weight.codes.view(torch.int8), weight.scale, 4)
    with pytest.raises(RuntimeError, match="float16"):
        block_linear(torch.randn(1, 64), weight.codes, weight.scale.float(), 4)


def test_the_environment_forces_a_path_and_a_wrong_value_is_an_error(tmp_path):
    import os
    import subprocess
    import sys

    code = ("from tritium.kernels.head_cpu import head_isa, load_head_kernel\n"
            "load_head_kernel(); print(head_isa())")
    env = os.environ | {"TRITIUM_HEAD_KERNEL_ISA": "portable"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "portable", done.stderr[-2000:]
    env["TRITIUM_HEAD_KERNEL_ISA"] = "sse9"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "sse9" in done.stderr and "unknown" in done.stderr
