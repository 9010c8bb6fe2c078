"""tritium::packed_linear_a8, the int8-activation path: every CPU path equals fake-quant activations + the float
reference.

What "equal" means here, and the tolerance:

* the kernel's quantizer gives the codes and the scale of ``quantize_activations`` bit for bit (checked through the
  kernel's own quantizer, ``tritium_cpu_info.a8_quantize``, on each path), and its integer products are exact;
* what is left is float32 arithmetic: the per-group scaling ``scale·(D − zero·Q) + shift·Q``, the sum over groups
  and the product with the token's scale, in another order than ``F.linear`` sums ``Σ_j (s·q_j)·w_j``. So where
  every number is a short dyadic one (power-of-two scales, integer zeros, shifts on a 2^-3 grid, codes·2^-7) both
  sides are exact and must agree bit for bit (``torch.equal``); on random data they agree to 1e-5 of the sum of
  |terms| Σ_j |s·q_j|·|w_j| per output (float32's 6e-8 per operation over at most ~50 groups). A code off by one
  moves an output by a whole term, ≥ 1e-4 of that sum at these widths, so the bound cannot hide one.

Every path this CPU runs is forced in turn (avx512 runs the VNNI kernel where the CPU has AVX512-VNNI).
"""

import pytest
import torch

import tritium.kernels.cpu as cpu
from tritium.kernels import (
    a8_kernel,
    a8_layout,
    activation_kernel_reason,
    available_paths,
    load_cpu_kernel,
    packed_linear_a8,
    packed_linear_a8_reference,
    packed_linear_reference,
    set_cpu_path,
)
from tritium.pack import pack_quantized
from tritium.pack.layouts import pack_grouped
from tritium.pack.packed import PackedWeight
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight
from tritium.quant.activations import ActivationGrid, fake_quantize_activations, quantize_activations
from tritium.quant.grids import GGUFBlockGrid

load_cpu_kernel()
LOADED = cpu.cpu_kernel_status()["loaded"]
RUNNABLE = available_paths() if LOADED else []
ALL_PATHS = ["avx512", "avx2", "portable"]
KINDS = ["ternary", "dlt", "ternary-2bit", "u4", "u4-sym", "u3", "u2"]

pytestmark = pytest.mark.usefixtures("restore_cpu_path")


def _use(path):
    if path not in RUNNABLE:
        pytest.skip(f"this CPU (or build) cannot run the {path} path")
    set_cpu_path(path)


def _grid(kind, group):
    if kind in ("ternary", "ternary-2bit"):
        return TernaryGrid("absmean", group=group, ragged_groups=True)
    if kind == "dlt":
        return TernaryGrid("dlt", group=group, ragged_groups=True)
    return UniformGrid(int(kind[1]), group=group, symmetric=kind.endswith("sym"), ragged_groups=True)


def _packed(kind, out, in_features, group, seed):
    """A packed weight from random float weights (RTN); DLT gets a random shift (RTN leaves it 0)."""
    w = torch.randn(out, in_features, generator=torch.Generator().manual_seed(seed))
    qw = quantize_weight(w, _grid(kind, group))
    if qw.shift is not None:
        qw.shift = torch.randn(qw.shift.shape, generator=torch.Generator().manual_seed(seed + 7)).half().float()
    return pack_quantized(qw, ternary_layout="2bit" if kind == "ternary-2bit" else "base3")


def _args(pw):
    return (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)


def _weight_terms(pw):
    """|scale·(digit − zero)| + |shift| per weight, float64 [out, in]: what the bound multiplies |x_fq| by."""
    scale, zero, shift = pw.group_params()
    sizes = torch.tensor([min(pw.group_size, pw.in_features - g) for g in range(0, pw.in_features, pw.group_size)])
    expand = lambda t: t.double().repeat_interleave(sizes, dim=1)  # noqa: E731
    terms = (expand(scale) * (pw.digits().double() - expand(zero))).abs()
    return terms + (expand(shift).abs() if shift is not None else 0)


def _run(pw, x, clip=1.0, layout=True):
    kernel_layout = a8_layout(pw.packed, pw.radix, pw.in_features, pw.group_size) if layout else None
    return packed_linear_a8(x, *_args(pw), clip, kernel_layout)


def _tokens(n, in_features, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=g) * torch.rand(n, 1, generator=g).mul(4).exp()  # varied token scales
    if in_features > 3:
        x[:, 3] *= 20  # an outlier channel, as real activations have
    return x.to(dtype)


# ---------------------------------------------------------------------------------- the quantizer


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("clip", [1.0, 0.9, 0.37])
def test_the_kernels_codes_and_scales_are_quantize_activations_bit_for_bit(path, clip):
    _use(path)
    for in_features, group_size, seed in [(1, 1, 0), (7, 7, 1), (64, 32, 2), (200, 64, 3), (577, 128, 4),
                                          (1536, 1536, 5)]:
        x = _tokens(6, in_features, seed)
        x[1] = 0  # an all-zero token: the 1e-8 floor of the scale
        x[2] *= 1e-12  # a tiny one: scale below the floor too
        codes, scales = torch.ops.tritium_cpu_info.a8_quantize(x, group_size, clip)
        want_codes, want_scale, zero = quantize_activations(x, ActivationGrid(bits=8, clip_ratio=clip))
        assert zero is None
        assert torch.equal(codes, want_codes), (in_features, group_size)
        assert torch.equal(scales, want_scale.reshape(-1)), (in_features, group_size)
        if clip < 1:
            assert int(codes.min()) == -128 or int(codes.max()) == 127  # clipping reaches the ends of the range


@pytest.mark.parametrize("path", ALL_PATHS)
def test_ties_round_half_to_even_as_torch_round_does(path):
    _use(path)
    codes = [127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 3.5, -3.5]
    x = torch.tensor([codes]) * 2.0**-7  # scale = (127·2^-7) / 127 = 2^-7 exactly, so x / scale is each tie exactly
    got, scale = torch.ops.tritium_cpu_info.a8_quantize(x, 10, 1.0)
    assert float(scale) == 2.0**-7
    expected = torch.tensor([[127, 0, 2, 2, 0, -2, -2, 126, 4, -4]], dtype=torch.int32)
    assert torch.equal(got, expected)
    assert torch.equal(quantize_activations(x, ActivationGrid(bits=8))[0], expected)  # the reference agrees


# ---------------------------------------------------------------------------------- exact cases


def _dyadic_weight(radix, out, in_features, group_size, zero, shift, seed, implicit_zero):
    """Digits at random, scales 2^-1..2^-3, integer zero points, shifts on a 2^-3 grid: every product and sum of the
    reference and of the kernel is exact in float32."""
    g = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, radix, (out, in_features), generator=g, dtype=torch.uint8)
    groups = -(-in_features // group_size)
    scale = (2.0 ** -torch.randint(1, 4, (out, groups), generator=g)).half()
    zeros = torch.randint(0, radix, (out, groups), generator=g).half() if zero else None
    shifts = (torch.randint(-8, 9, (out, groups), generator=g) / 8).half() if shift else None
    return PackedWeight(pack_grouped(digits, group_size, radix), scale, radix, in_features, group_size, zero=zeros,
                        shift=shifts, implicit_zero=implicit_zero).validate()


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("radix,zero,shift,implicit", [(3, False, True, 1.0), (3, False, False, 1.0),
                                                       (4, False, True, 1.0), (16, True, False, 0.0),
                                                       (16, False, False, 8.0), (8, True, False, 0.0)])
def test_exact_values_give_the_reference_bit_for_bit(path, radix, zero, shift, implicit):
    _use(path)
    for out, in_features, group_size, tokens, seed in [(16, 64, 64, 1, 0), (37, 200, 64, 3, 1), (5, 13, 5, 9, 2),
                                                       (50, 100, 17, 17, 3), (33, 256, 128, 64, 4)]:
        pw = _dyadic_weight(radix, out, in_features, group_size, zero, shift, seed, implicit)
        g = torch.Generator().manual_seed(seed)
        codes = torch.randint(-127, 128, (tokens, in_features), generator=g)
        codes[:, 0] = 127  # each token's max |x| is 127·2^-7, so its scale is 2^-7 and x / scale = codes exactly
        x = codes.float() * 2.0**-7
        want = packed_linear_reference(x, *_args(pw))
        assert torch.equal(packed_linear_a8_reference(x, *_args(pw), 1.0), want)  # fake quant changes nothing here
        got = _run(pw, x)
        assert torch.equal(got, want), (path, out, in_features, group_size, tokens, (got - want).abs().max())


# ---------------------------------------------------------------------------------- random shapes


def _check_close(pw, x, clip=1.0):
    got = _run(pw, x, clip)
    assert got.shape == (*x.shape[:-1], pw.out_features) and got.dtype == x.dtype
    grid = ActivationGrid(bits=8, clip_ratio=clip)
    seen = fake_quantize_activations(x.float(), grid)
    exact = seen.double() @ pw.dequantize(torch.float64).T
    bound = 1e-5 * (seen.double().abs() @ _weight_terms(pw).T) + 1e-30
    assert bool(((got.double() - exact).abs() <= bound).all()), float(((got.double() - exact).abs() / bound).max())
    reference = packed_linear_a8_reference(x, *_args(pw), clip)
    assert bool(((got.double() - reference.double()).abs() <= 2 * bound).all())


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_random_shapes_match_the_fake_quant_reference(path, kind):
    _use(path)
    g = torch.Generator().manual_seed(len(kind))
    for case in range(6):
        out = int(torch.randint(1, 70, (1,), generator=g))
        in_features = int(torch.randint(1, 300, (1,), generator=g))
        group = [in_features, 32, 17, 128, "channel", 64][case]
        tokens = [1, 2, 5, 8, 13, 64][case]
        pw = _packed(kind, out, in_features, group, seed=case)
        _check_close(pw, _tokens(tokens, in_features, seed=case), clip=[1.0, 0.8][case % 2])


@pytest.mark.parametrize("path", ALL_PATHS)
def test_smollm2_shapes_and_batched_inputs(path):
    _use(path)
    for kind, (out, in_features) in [("ternary", (1536, 576)), ("u4", (576, 1536)), ("dlt", (576, 576))]:
        pw = _packed(kind, out, in_features, 128, seed=out)
        _check_close(pw, _tokens(1, in_features, seed=1))
        _check_close(pw, _tokens(64, in_features, seed=2).reshape(4, 16, in_features))  # [batch, seq, width]


@pytest.mark.parametrize("path", ALL_PATHS)
def test_half_precision_inputs_come_back_in_their_dtype(path):
    _use(path)
    pw = _packed("u4", 40, 96, 32, seed=3)
    for dtype in (torch.float16, torch.bfloat16):
        x = _tokens(3, 96, seed=4, dtype=dtype)
        got = _run(pw, x)
        assert got.dtype == dtype
        torch.testing.assert_close(got, packed_linear_a8_reference(x, *_args(pw), 1.0), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_non_finite_tokens_give_nan_rows_and_leave_the_others_alone(path):
    _use(path)
    pw = _packed("dlt", 20, 50, 16, seed=5)
    x = _tokens(4, 50, seed=6)
    x[1, 7], x[2, 0] = float("nan"), float("inf")
    got = _run(pw, x)
    reference = packed_linear_a8_reference(x, *_args(pw), 1.0)
    assert torch.isnan(got[1]).all() and torch.isnan(got[2]).all()
    assert torch.isnan(reference[1]).all() and torch.isnan(reference[2]).all()  # what the fake-quant path gives
    torch.testing.assert_close(got[[0, 3]], reference[[0, 3]], rtol=1e-5, atol=1e-5)
    zero = _run(pw, torch.zeros(2, 50))
    assert torch.equal(zero, torch.zeros(2, 20))


def test_every_path_gives_the_same_outputs():
    if len(RUNNABLE) < 2:
        pytest.skip("this CPU runs one path only")
    pw = _packed("u4", 45, 300, 64, seed=8)
    x = _tokens(9, 300, seed=9)
    results = {}
    for path in RUNNABLE:
        set_cpu_path(path)
        results[path] = _run(pw, x)
    first = next(iter(results.values()))
    for path, y in results.items():
        torch.testing.assert_close(y, first, rtol=1e-5, atol=1e-5, msg=path)


def test_the_avx512_path_runs_vnni_where_the_cpu_has_it():
    from tritium.utils.hardware import cpu_flags

    if "avx512" not in RUNNABLE:
        pytest.skip("no avx512 path here")
    set_cpu_path("avx512")
    assert a8_kernel() == ("avx512 (vpdpbusd)" if "avx512_vnni" in cpu_flags() else "avx2 (vpmaddubsw)")
    if "avx2" in RUNNABLE:
        set_cpu_path("avx2")
        assert a8_kernel() == "avx2 (vpmaddubsw)"


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.skipif(not LOADED, reason="no CPU kernel")
def test_bad_arguments_are_refused_by_the_kernel():
    pw = _packed("u4", 8, 32, 16, seed=0)
    x = torch.randn(2, 32)
    layout = a8_layout(pw.packed, pw.radix, pw.in_features, pw.group_size)
    op = torch.ops.tritium.packed_linear_a8
    with pytest.raises(RuntimeError, match="pass kernel_layout=tritium.kernels.cpu.a8_layout"):
        op(x, *_args(pw), 1.0, None)
    with pytest.raises(RuntimeError, match="clip_ratio must be in"):
        op(x, *_args(pw), 0.0, layout)
    with pytest.raises(RuntimeError, match="does not fit these packed codes"):
        op(x, *_args(pw), 1.0, layout[:, :1].contiguous())
    eight = _packed("u4", 8, 32, 16, seed=0)
    with pytest.raises(RuntimeError, match="radix 2..16"):
        op(x, eight.packed, eight.scale, eight.zero, None, 256, 32, 16, 0.0, 1.0, layout)
    with pytest.raises(ValueError, match="radix 2..16"):
        a8_layout(pw.packed, 256, 32, 16)


def test_the_kernels_say_which_grids_they_run_with_integer_activations():
    a8 = ActivationGrid(bits=8)
    for weights in (TernaryGrid("absmean"), TernaryGrid("dlt", group=128), UniformGrid(4, 128), UniformGrid(2, 64),
                    UniformGrid(3, 128, symmetric=True)):
        assert activation_kernel_reason(weights, a8) is None
        assert activation_kernel_reason(weights, ActivationGrid(bits=8, clip_ratio=0.85)) is None
    cases = [(UniformGrid(4, 128), ActivationGrid(bits=4, symmetric=False), "8-bit activations, not 4-bit"),
             (UniformGrid(4, 128), ActivationGrid(bits=6), "not 6-bit"),
             (UniformGrid(4, 128), ActivationGrid(bits=8, symmetric=False), "symmetric activations"),
             (UniformGrid(4, 128), ActivationGrid(bits=8, group=32), "one activation scale per token"),
             (UniformGrid(8, 128), a8, "up to 4 bits, not 8-bit codes"),
             (GGUFBlockGrid("q4_0"), a8, "no path for llama.cpp's")]
    for weights, acts, phrase in cases:
        reason = activation_kernel_reason(weights, acts)
        assert phrase in reason and "it runs A8 (8-bit symmetric activations, one scale per token) on ternary and " \
                                   "uniform 2-, 3- and 4-bit weights" in reason, reason


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16"])
def test_every_stored_parameter_dtype_is_read_right(path, scale_dtype):
    """The kernels read scale, zero and shift in their stored dtype (fp16 above; here fp32 and bf16), each of the
    16 rows of a block from its own place, a short last block included."""
    _use(path)
    for kind in ("dlt", "u4"):
        w = torch.randn(37, 150, generator=torch.Generator().manual_seed(11))
        qw = quantize_weight(w, _grid(kind, 32))
        qw.scale = qw.scale.bfloat16().float()  # values bf16 can hold, so both storages keep them exactly
        if qw.shift is not None:
            qw.shift = torch.randn(qw.shift.shape, generator=torch.Generator().manual_seed(12)).bfloat16().float()
        pw = pack_quantized(qw, scale_dtype=scale_dtype)
        assert pw.scale.dtype == getattr(torch, scale_dtype)
        _check_close(pw, _tokens(3, 150, seed=13))
