"""Linear layers that hold only packed codes and per-group fp16 parameters.

``TernaryLinear`` (codes in {−1, 0, 1}, scale α, optional DLT shift γ),
``QuantLinear`` (2/3/4/8-bit uniform codes, scale, zero point) and ``GGUFBlockLinear``
(a llama.cpp block format's codes, fp16 d, and m for the ``_1`` types) share one base class
whose forward is the ``tritium::packed_linear`` op; the dispatcher picks the C++ CPU
kernel, the Triton CUDA kernel or the reference from the input's device.

A ternary or uniform (≤ 4-bit) layer whose input has an 8-bit per-token activation quantizer
(:mod:`tritium.nn.activation_quant`, as a loaded W1.58A8 or W4A8 folder has) runs ``tritium::packed_linear_a8``
on the CPU instead: the kernel quantizes the input to int8 itself, to the codes the quantizer would give, and
multiplies in integers (see :meth:`PackedLinear.integer_activation_grid`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import (
    a8_layout,
    bit_planes,
    int8_activation_reason,
    load_cpu_kernel,
    packed_linear,
    packed_linear_a8,
    planes_available,
)
from ..kernels.a8 import A8_MAX_RADIX
from ..kernels.cpu import layout_epoch
from ..pack.layouts import PackError, group_sizes, packed_length, ternary_radix, uniform_radix
from ..pack.packed import SCALE_DTYPES, PackedWeight, pack_quantized
from ..quant.activations import ActivationGrid
from ..quant.grids import GGUFBlockGrid, QuantizedWeight, TernaryGrid, UniformGrid, grid_layout
from .activation_quant import activation_quantizer_of


class PackedLinear(nn.Module):
    """y = x·Wᵀ (+ bias) with W = scale·(digit − zero) + shift per group, stored packed."""

    is_packed_linear = True  # lets model adapters treat it as a linear without importing this module
    # Whether tritium::packed_linear_a8 may run this layer with integer activations: ternary and uniform codes
    # (of radix ≤ 16); GGUF block formats keep float activations (activation_kernel_reason refuses them).
    int8_activation_kernel = False

    def __init__(self, in_features: int, out_features: int, *, radix: int, group_size: int, bias: bool = False,
                 has_zero: bool = False, has_shift: bool = False, implicit_zero: float = 0.0,
                 scale_dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        n_groups = len(group_sizes(in_features, group_size))
        self.in_features, self.out_features = in_features, out_features
        self.radix, self.group_size, self.implicit_zero = radix, group_size, float(implicit_zero)
        shape = (out_features, n_groups)
        self.register_buffer("packed", torch.zeros(out_features, n_groups, packed_length(group_size, radix),
                                                   dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.zeros(shape, dtype=scale_dtype, device=device))
        self.register_buffer("zero", torch.zeros(shape, dtype=scale_dtype, device=device) if has_zero else None)
        self.register_buffer("shift", torch.zeros(shape, dtype=scale_dtype, device=device) if has_shift else None)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        # The CPU kernel's bit-plane copy of `packed`, built on the first CPU forward; not saved.
        self._kernel_layout: Tensor | None = None
        self._kernel_layout_key: tuple | None = None
        # The int8-activation kernel's copy (tritium.kernels.cpu.a8_layout), built on the first such forward.
        self._a8_layout: Tensor | None = None
        self._a8_layout_key: tuple | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_packed(cls, weight: PackedWeight, bias: Tensor | None = None) -> "PackedLinear":
        weight.validate()
        module = cls.__new__(cls)
        PackedLinear.__init__(module, weight.in_features, weight.out_features, radix=weight.radix,
                              group_size=weight.group_size, bias=bias is not None, has_zero=weight.zero is not None,
                              has_shift=weight.shift is not None, implicit_zero=weight.implicit_zero,
                              scale_dtype=weight.scale.dtype, device=weight.packed.device)
        module.load_packed(weight)
        if bias is not None:
            module.bias.data = bias.detach().clone()
        return module

    @classmethod
    def from_quantized(cls, qweight: QuantizedWeight, bias: Tensor | None = None, ternary_layout: str = "base3",
                       scale_dtype: str = "float16", name: str = "weight") -> "PackedLinear":
        return packed_class(qweight.grid).from_packed(pack_quantized(qweight, ternary_layout, scale_dtype, name), bias)

    def load_packed(self, weight: PackedWeight) -> None:
        for part in ("packed", "scale", "zero", "shift"):
            mine, theirs = getattr(self, part), getattr(weight, part)
            if (mine is None) != (theirs is None) or (mine is not None and mine.shape != theirs.shape):
                raise PackError(f"{part}: the module expects {None if mine is None else tuple(mine.shape)}, "
                                f"got {None if theirs is None else tuple(theirs.shape)}")
            if mine is not None:
                mine.data = theirs.detach().clone()
        self._forget_kernel_layout()

    def _forget_kernel_layout(self) -> None:
        # A freed buffer's address can come back for new codes: never trust the cached layout across a load.
        self._kernel_layout = self._kernel_layout_key = None
        self._a8_layout = self._a8_layout_key = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._forget_kernel_layout()

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round the fp16 scales (and zero points, shifts) and change the weights:
        # they follow device moves but keep their stored dtype.
        kept = {k: self._buffers[k] for k in ("scale", "zero", "shift") if self._buffers.get(k) is not None}
        super()._apply(fn, recurse)
        self._forget_kernel_layout()
        for key, before in kept.items():
            after = self._buffers[key]
            if after.dtype != before.dtype:
                self._buffers[key] = before.to(device=after.device)
        return self

    # ------------------------------------------------------------------ views

    def packed_weight(self) -> PackedWeight:
        return PackedWeight(self.packed, self.scale, self.radix, self.in_features, self.group_size,
                            zero=self.zero, shift=self.shift, implicit_zero=self.implicit_zero)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.packed_weight().dequantize(dtype)

    def cpu_kernel_layout(self) -> Tensor | None:
        """The bit planes the SIMD CPU paths read, rebuilt whenever ``packed`` (or the active path) changes;
        None where the active path does not read them."""
        packed = self.packed
        key = (packed.data_ptr(), packed._version, layout_epoch())
        if self._kernel_layout_key == key:  # the common case, checked first: it runs on every forward
            return self._kernel_layout
        if packed.device.type != "cpu" or self.radix > 16 or not planes_available():
            return None
        key = (packed.data_ptr(), packed._version, layout_epoch())  # the first call loads the kernel: new epoch
        if self._kernel_layout_key != key:
            self._kernel_layout = bit_planes(self.packed, self.radix, self.in_features, self.group_size)
            self._kernel_layout_key = key
        return self._kernel_layout

    def a8_kernel_layout(self) -> Tensor | None:
        """The int8-activation kernel's copy of ``packed`` (:func:`tritium.kernels.cpu.a8_layout`), rebuilt whenever
        ``packed`` changes; None off the CPU or without the CPU kernel (then the reference runs, without it)."""
        packed = self.packed
        key = (packed.data_ptr(), packed._version)
        if self._a8_layout_key == key:
            return self._a8_layout
        if packed.device.type != "cpu" or not load_cpu_kernel():
            return None
        self._a8_layout = a8_layout(packed, self.radix, self.in_features, self.group_size)
        self._a8_layout_key = key
        return self._a8_layout

    def integer_activation_grid(self, x: Tensor) -> ActivationGrid | None:
        """The grid on which this layer's kernel quantizes ``x`` itself, to int8 codes, or None.

        It is the grid of the layer's own activation quantizer (:mod:`tritium.nn.activation_quant`) where that is
        enabled, has no AWQ channel scale, takes 8-bit symmetric per-token codes, and ``x`` is on the CPU with a SIMD
        kernel path (avx512 or avx2): then the quantizer lets ``x`` through and the forward runs
        ``tritium::packed_linear_a8``, which computes the same codes and multiplies them in integers. Otherwise
        (None) the quantizer fake-quantizes ``x`` and the float-activation kernel runs, as for every layer before
        the int8 path existed. (The portable path's integer loops are slower than its float lookup tables, so it
        keeps float activations; the reference, without a built kernel, too.)"""
        if not self.int8_activation_kernel or self.radix > A8_MAX_RADIX or x.device.type != "cpu" \
                or not planes_available():
            return None
        quantizer = activation_quantizer_of(self)
        if quantizer is None or not quantizer.enabled or quantizer.channel_scale is not None:
            return None
        return quantizer.grid if int8_activation_reason(quantizer.grid) is None else None

    def forward(self, x: Tensor) -> Tensor:
        grid = self.integer_activation_grid(x)
        if grid is not None:
            y = packed_linear_a8(x, self.packed, self.scale, self.zero, self.shift, self.radix, self.in_features,
                                 self.group_size, self.implicit_zero, grid.clip_ratio, self.a8_kernel_layout())
        else:
            layout = self.cpu_kernel_layout() if x.device.type == "cpu" else None
            y = packed_linear(x, self.packed, self.scale, self.zero, self.shift, self.radix, self.in_features,
                              self.group_size, self.implicit_zero, layout)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"radix={self.radix}", f"group_size={self.group_size}", f"bias={self.bias is not None}"]
        if self.zero is not None:
            parts.append("zero=True")
        if self.shift is not None:
            parts.append("shift=True")
        return ", ".join(parts)


class TernaryLinear(PackedLinear):
    """Ternary weights: digits t + 1 (implicit zero 1), α per group and, for DLT, a shift γ."""

    int8_activation_kernel = True

    def __init__(self, in_features: int, out_features: int, *, group_size: int, layout: str = "base3",
                 bias: bool = False, has_shift: bool = False, scale_dtype: torch.dtype = torch.float16, device=None):
        super().__init__(in_features, out_features, radix=ternary_radix(layout), group_size=group_size, bias=bias,
                         has_shift=has_shift, implicit_zero=1.0, scale_dtype=scale_dtype, device=device)


class QuantLinear(PackedLinear):
    """Uniform k-bit weights: w = scale·(code − zero); symmetric grids keep the zero implicit (2^(k−1))."""

    int8_activation_kernel = True  # up to 4 bits (radix 16); 8-bit codes keep float activations

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int, symmetric: bool = False,
                 bias: bool = False, scale_dtype: torch.dtype = torch.float16, device=None):
        super().__init__(in_features, out_features, radix=uniform_radix(bits), group_size=group_size, bias=bias,
                         has_zero=not symmetric, implicit_zero=float(2 ** (bits - 1)) if symmetric else 0.0,
                         scale_dtype=scale_dtype, device=device)


class GGUFBlockLinear(PackedLinear):
    """A llama.cpp block format (:class:`~tritium.quant.grids.GGUFBlockGrid`): base-``levels`` digits per block
    (sub-block for the k-quants) with the format's implicit zero (the types without a min) or its min as the shift."""

    def __init__(self, in_features: int, out_features: int, *, grid: GGUFBlockGrid, bias: bool = False,
                 scale_dtype: torch.dtype = torch.float16, device=None):
        super().__init__(in_features, out_features, radix=grid.levels, group_size=grid.group, bias=bias,
                         has_shift=grid.has_min, implicit_zero=float(grid.fixed_zero or 0), scale_dtype=scale_dtype,
                         device=device)


def packed_class(grid) -> type[PackedLinear]:
    """The packed module class that holds weights on ``grid``."""
    if isinstance(grid, TernaryGrid):
        return TernaryLinear
    return GGUFBlockLinear if isinstance(grid, GGUFBlockGrid) else QuantLinear


def empty_packed_linear(linear: nn.Linear | nn.Module, grid, ternary_layout: str = "base3",
                        scale_dtype: str = "float16", name: str = "weight", device=None) -> PackedLinear:
    """The packed module that ``grid`` makes of ``linear``, with empty buffers, ready for a state dict."""
    out_features, in_features = linear.out_features, linear.in_features
    layout = grid_layout((out_features, in_features), grid, name=name)
    group_size = in_features if layout.per_tensor else layout.group_size
    dtype = SCALE_DTYPES[scale_dtype]
    bias = getattr(linear, "bias", None) is not None
    if isinstance(grid, TernaryGrid):
        return TernaryLinear(in_features, out_features, group_size=group_size, layout=ternary_layout, bias=bias,
                             has_shift=grid.has_shift, scale_dtype=dtype, device=device)
    if isinstance(grid, UniformGrid):
        return QuantLinear(in_features, out_features, bits=grid.bits, group_size=group_size,
                           symmetric=grid.symmetric, bias=bias, scale_dtype=dtype, device=device)
    if isinstance(grid, GGUFBlockGrid):
        if grid.super_block:  # as pack_quantized stores them: k-quant sub-block scales are float32 products
            dtype = torch.float32
        return GGUFBlockLinear(in_features, out_features, grid=grid, bias=bias, scale_dtype=dtype, device=device)
    raise PackError(f"{name}: grid {grid!r} has no packed module")
