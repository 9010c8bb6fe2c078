"""Turn a fake-quantized model into a packed one, and check packed models after loading."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from ..pack.layouts import PackError, digits_per_byte, ternary_radix, uniform_radix
from ..pack.packed import SCALE_DTYPES, PackedWeight, bits_report, pack_quantized
from ..quant.grids import GGUFBlockGrid, QuantizedWeight, TernaryGrid, UniformGrid, grid_layout
from .packed_linear import PackedLinear, TernaryLinear, empty_packed_linear, packed_class


@torch.no_grad()
def pack_model(model: nn.Module, weights: dict[str, QuantizedWeight], ternary_layout: str = "base3",
               scale_dtype: str = "float16") -> nn.Module:
    """Replace each linear named in ``weights`` (a QuantizationResult's weights) by its packed module, in place.

    The packed model computes what the fake-quant model computes: the codes and scales
    are the ones its weights were dequantized from.
    """
    if not weights:
        raise PackError("pack_model got no quantized weights: quantize the model first (tritium.quantize_)")
    for name, qweight in weights.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError as err:
            raise PackError(f"{name}: the model has no such module; were the weights made from another model?") from err
        if isinstance(linear, PackedLinear):
            raise PackError(f"{name}: already packed")
        if not isinstance(linear, nn.Linear):
            raise PackError(f"{name}: expected an nn.Linear, found {type(linear).__name__}")
        if tuple(linear.weight.shape) != tuple(qweight.codes.shape):
            raise PackError(f"{name}: the linear's weight is {tuple(linear.weight.shape)} but the quantized codes are "
                            f"{tuple(qweight.codes.shape)}; were the weights made from another model?")
        module = PackedLinear.from_quantized(qweight, bias=linear.bias, ternary_layout=ternary_layout,
                                             scale_dtype=scale_dtype, name=name)
        model.set_submodule(name, module.to(linear.weight.device))
    return model


def packed_modules(model: nn.Module) -> dict[str, PackedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PackedLinear)}


def packed_bits_report(model: nn.Module) -> dict:
    """Bits per weight of every packed linear (codes, scales, zero points and shifts)."""
    weights: dict[str, PackedWeight] = {name: m.packed_weight() for name, m in packed_modules(model).items()}
    return bits_report(weights)


def replace_with_empty_packed(model: nn.Module, names: list[str], grid, ternary_layout: str = "base3",
                              scale_dtype: str = "float16", grid_overrides: dict | None = None) -> nn.Module:
    """Swap the named linears for empty packed modules of the right shapes (before a state dict loads);
    each on ``grid``, or on its own grid in ``grid_overrides`` (mixed precision)."""
    grid_overrides = grid_overrides or {}
    for name in names:
        try:
            linear = model.get_submodule(name)
        except AttributeError as err:
            raise PackError(f"the packed checkpoint names module {name!r}, which this model does not have") from err
        if not isinstance(linear, nn.Linear):
            raise PackError(f"{name}: expected an nn.Linear to replace, found {type(linear).__name__}")
        device = linear.weight.device
        own = grid_overrides.get(name, grid)
        model.set_submodule(name, empty_packed_linear(linear, own, ternary_layout, scale_dtype, name, device=device))
    return model


def module_checksum(module: PackedLinear) -> str:
    """CRC-32 of a packed module's codes and group parameters: detects corrupt or missing data after a load."""
    crc = 0
    for part in ("packed", "scale", "zero", "shift"):  # the bias follows the model dtype, like other float weights
        t = getattr(module, part)
        if t is not None:
            crc = zlib.crc32(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(), crc)
    return f"{crc:08x}"


def verify_packed_model(model: nn.Module, checksums: dict[str, str] | None = None) -> None:
    """Raise a clear error if a packed module holds impossible values or does not match its checksum."""
    modules = packed_modules(model)
    if checksums is not None:
        missing = sorted(set(checksums) - set(modules))
        if missing:
            raise PackError(f"the checkpoint's packed modules {missing[:3]} were not rebuilt in the model")
    for name, module in modules.items():
        module.packed_weight().validate(name)
        values = module.radix ** digits_per_byte(module.radix)
        if values < 256 and module.packed.numel() and int(module.packed.max()) >= values:
            raise PackError(f"{name}: the packed codes hold byte values no radix-{module.radix} digits make: "
                            "the file is corrupt")
        if isinstance(module, TernaryLinear) and module.radix == 4 and _has_digit_3(module.packed):
            # Every byte is valid 2-bit data, but a trit is never 3: such a weight would silently read as 2·α.
            raise PackError(f"{name}: the 2-bit ternary codes hold the digit 3, which no trit makes: the file is "
                            "corrupt")
        if checksums is not None and name in checksums and module_checksum(module) != checksums[name]:
            raise PackError(f"{name}: the loaded packed weights do not match the checksum recorded when they were "
                            "saved: the file is corrupt, truncated or from another model. Re-export it.")


def _has_digit_3(packed: Tensor) -> bool:
    """True when some 2-bit field of the bytes is 3 (both of its bits set)."""
    both = packed & (packed >> 1) & 0x55  # bit 2i set where field i is 3
    return bool(both.any())


def packed_to_quantized(weight: PackedWeight | PackedLinear, grid, name: str = "weight") -> QuantizedWeight:
    """The :class:`QuantizedWeight` a packed weight holds, exactly: the inverse of ``pack_quantized``.

    Ternary digits t + 1 become int8 codes t (the shift is kept); uniform digits are the
    uint8 codes, with the stored zero points or the implicit 2^(k−1) of a symmetric grid.
    Scales, zero points and shifts take the grid's ``scale_shape`` ([1, 1] per tensor).
    """
    if isinstance(weight, PackedLinear):
        weight = weight.packed_weight()
    weight.validate(name)
    layout = grid_layout((weight.out_features, weight.in_features), grid, name=name)
    group_size = weight.in_features if layout.per_tensor else layout.group_size
    if group_size != weight.group_size:
        raise PackError(f"{name}: the packed weight has groups of {weight.group_size} but the grid "
                        f"{grid.describe()} makes groups of {group_size}: the codes and the config disagree")
    scale, zero, shift = weight.group_params()
    digits = weight.digits()

    def grouped(t: Tensor | None, part: str) -> Tensor | None:
        if t is None or not layout.per_tensor:
            return t
        if not bool((t == t[0, 0]).all()):
            raise PackError(f"{name}: a per-tensor grid needs one {part} for the whole matrix, the packed weight "
                            "holds several")
        return t[:1, :1].clone()

    if isinstance(grid, TernaryGrid):
        if weight.zero is not None or weight.implicit_zero != 1.0 or weight.radix not in (3, 4):
            raise PackError(f"{name}: this is not a ternary packed weight (radix {weight.radix}, zero "
                            f"{'stored' if weight.zero is not None else weight.implicit_zero})")
        if digits.numel() and int(digits.max()) > 2:
            raise PackError(f"{name}: ternary digits must lie in 0..2; the packed codes are corrupt")
        if (shift is not None) != grid.has_shift:
            raise PackError(f"{name}: the grid {grid.describe()} {'needs' if grid.has_shift else 'has no'} shift, "
                            f"the packed weight {'has one' if shift is not None else 'has none'}")
        codes = (digits.to(torch.int16) - 1).to(torch.int8)
        return QuantizedWeight(codes, grouped(scale, "scale"), grid, layout, shift=grouped(shift, "shift"))
    if isinstance(grid, UniformGrid):
        if weight.radix != uniform_radix(grid.bits):
            raise PackError(f"{name}: the packed weight has radix {weight.radix}, a {grid.bits}-bit grid needs "
                            f"{uniform_radix(grid.bits)}")
        if shift is not None:
            raise PackError(f"{name}: a uniform grid has no shift, but the packed weight holds one")
        return QuantizedWeight(digits.to(torch.uint8), grouped(scale, "scale"), grid, layout,
                               zero=grouped(zero, "zero point"))
    if isinstance(grid, GGUFBlockGrid):
        stored_zero = None if grid.has_min else float(grid.fixed_zero)
        if weight.radix != grid.levels or weight.zero is not None or (shift is not None) != grid.has_min or (
                stored_zero is not None and weight.implicit_zero != stored_zero):
            raise PackError(f"{name}: this packed weight (radix {weight.radix}, "
                            f"{'a shift' if shift is not None else 'no shift'}, zero "
                            f"{'stored' if weight.zero is not None else weight.implicit_zero}) is not a "
                            f"{grid.describe()} weight: the codes and the config disagree")
        return QuantizedWeight(digits.to(torch.uint8), scale, grid, layout,
                               zero=None if grid.has_min else zero, shift=shift)
    raise PackError(f"{name}: grid {grid!r} has no packed form")


def check_against_weight(name: str, weight: PackedWeight, reference: Tensor) -> None:
    """Raise unless ``weight`` dequantizes to ``reference`` (a fake-quant linear weight) up to its dtype's rounding."""
    if tuple(reference.shape) != (weight.out_features, weight.in_features):
        raise PackError(f"{name}: the codes are {(weight.out_features, weight.in_features)} but the model's weight "
                        f"is {tuple(reference.shape)}: the codes belong to another model")
    ours = weight.dequantize(torch.float32).to(reference.device)
    rounded = ours.to(reference.dtype).float()
    theirs = reference.detach().float()
    tolerance = torch.finfo(reference.dtype).eps * float(theirs.abs().max()) if theirs.numel() else 0.0
    error = float((rounded - theirs).abs().max()) if theirs.numel() else 0.0
    if not error <= tolerance:
        raise PackError(f"{name}: the stored codes dequantize to weights that differ from the model's by up to "
                        f"{error:.3g} (allowed {tolerance:.3g}, the {reference.dtype} rounding): the codes do not "
                        "belong to these weights. Re-run `tritium quantize` to write them together.")


@torch.no_grad()
def pack_with_codes(model: nn.Module, codes: dict[str, PackedWeight], grid, ternary_layout: str = "base3",
                    scale_dtype: str = "float16", grid_overrides: dict | None = None) -> nn.Module:
    """Swap each fake-quant linear named in ``codes`` for the packed module those codes make, in place;
    each linear is on ``grid`` or on its own grid in ``grid_overrides`` (mixed precision).

    Each packed module is checked first against the float weight it replaces, so a model
    and codes that do not belong together are refused instead of silently changed.
    """
    if not codes:
        raise PackError("no codes to pack with")
    if scale_dtype not in SCALE_DTYPES:
        raise PackError(f"scale_dtype {scale_dtype!r} is unknown: choose one of {sorted(SCALE_DTYPES)}")
    for name, weight in codes.items():
        own = (grid_overrides or {}).get(name, grid)
        ternary = isinstance(own, TernaryGrid)
        radix = ternary_radix(ternary_layout) if ternary else None
        target = packed_class(own)
        try:
            linear = model.get_submodule(name)
        except AttributeError as err:
            raise PackError(f"{name}: the codes name a module this model does not have; they belong to another "
                            "model") from err
        if isinstance(linear, PackedLinear):
            raise PackError(f"{name}: already packed")
        if not isinstance(linear, nn.Linear):
            raise PackError(f"{name}: expected an nn.Linear, found {type(linear).__name__}")
        check_against_weight(name, weight, linear.weight)
        same_layout = (radix is None or weight.radix == radix) and weight.scale.dtype == SCALE_DTYPES[scale_dtype]
        if not same_layout:
            weight = pack_quantized(packed_to_quantized(weight, own, name), ternary_layout, scale_dtype, name)
        module = target.from_packed(weight, linear.bias)
        model.set_submodule(name, module.to(linear.weight.device))
    return model


@torch.no_grad()
def unpack_model(model: nn.Module, grid, grid_overrides: dict | None = None) -> dict[str, QuantizedWeight]:
    """Replace every packed module by an ``nn.Linear`` holding its dequantized weight, in place;
    each module is on ``grid`` or on its own grid in ``grid_overrides`` (mixed precision).

    Returns the modules' quantized weights (full name → QuantizedWeight), as a
    QuantizationResult holds them, for exporters that read float linears plus codes.
    """
    weights = {}
    for name, module in packed_modules(model).items():
        qweight = packed_to_quantized(module, (grid_overrides or {}).get(name, grid), name)
        dtype = module.bias.dtype if module.bias is not None else torch.float32
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=module.packed.device, dtype=dtype)
        linear.weight.copy_(module.dequantize(torch.float32))
        if module.bias is not None:
            linear.bias.copy_(module.bias)
        model.set_submodule(name, linear)
        weights[name] = qweight
    return weights
