"""Turn a fake-quantized model into a packed one, and check packed models after loading."""

from __future__ import annotations

import zlib

import torch
from torch import nn

from ..pack.layouts import PackError, digits_per_byte
from ..pack.packed import PackedWeight, bits_report
from ..quant.grids import QuantizedWeight
from .packed_linear import PackedLinear, empty_packed_linear


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
                              scale_dtype: str = "float16") -> nn.Module:
    """Swap the named linears for empty packed modules of the right shapes (before a state dict loads)."""
    for name in names:
        try:
            linear = model.get_submodule(name)
        except AttributeError as err:
            raise PackError(f"the packed checkpoint names module {name!r}, which this model does not have") from err
        if not isinstance(linear, nn.Linear):
            raise PackError(f"{name}: expected an nn.Linear to replace, found {type(linear).__name__}")
        device = linear.weight.device
        model.set_submodule(name, empty_packed_linear(linear, grid, ternary_layout, scale_dtype, name, device=device))
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
        if checksums is not None and name in checksums and module_checksum(module) != checksums[name]:
            raise PackError(f"{name}: the loaded packed weights do not match the checksum recorded when they were "
                            "saved: the file is corrupt, truncated or from another model. Re-export it.")
