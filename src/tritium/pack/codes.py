"""The codes sidecar of a fake-quant folder: ``tritium_codes.safetensors``.

A fake-quant folder holds float weights on the grid, which is enough to run it but not
to pack it: rounding a dequantized weight back to codes is not exact in general (bf16
weights, DLT shifts). So ``tritium quantize`` also stores each quantized linear's packed
codes and fp16 scales beside the weights, and ``tritium pack`` / ``tritium export`` read
them back. transformers only reads ``model.safetensors`` (or its index), so the extra file
does not change how the folder loads.

Layout: for linear ``name`` the tensors ``name.packed`` (uint8), ``name.scale`` and, when
present, ``name.zero`` / ``name.shift``; the safetensors metadata holds the grid and, per
linear, radix, in_features, group_size and implicit_zero (as JSON).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.errors import TritiumError
from ..pack.layouts import PackError
from ..pack.packed import PackedWeight, pack_quantized
from ..quant.grids import QuantizedWeight, grid_from_dict

CODES_FILE = "tritium_codes.safetensors"
CODES_FORMAT = "tritium-codes"
CODES_VERSION = "1"
PARTS = ("packed", "scale", "zero", "shift")


class CodesError(TritiumError, ValueError):
    """The codes sidecar is missing or unreadable; the message says how to get a good one."""


@dataclass
class Codes:
    weights: dict[str, PackedWeight]  # full linear name -> its packed codes
    grid: dict  # the grid they were quantized on, as grid_to_dict writes it
    grid_overrides: dict = field(default_factory=dict)  # mixed precision: linear name -> its own grid mapping

    def grid_object(self):
        return grid_from_dict(self.grid)


def pack_for_sidecar(weights: dict[str, QuantizedWeight]) -> dict[str, PackedWeight]:
    """Pack every weight in the base-3 ternary layout with fp16 scales (float32 if a method's scales need it)."""
    packed = {}
    for name, qweight in weights.items():
        try:
            packed[name] = pack_quantized(qweight, "base3", "float16", name)
        except PackError:  # scales not exactly fp16: keep them exact rather than lose the file
            packed[name] = pack_quantized(qweight, "base3", "float32", name)
    return packed


def codes_bytes(weights: dict[str, PackedWeight], grid: dict, grid_overrides: dict | None = None) -> bytes:
    from safetensors.torch import save

    tensors, modules = {}, {}
    for name, weight in sorted(weights.items()):
        for part in PARTS:
            t = getattr(weight, part)
            if t is not None:
                tensors[f"{name}.{part}"] = t.detach().cpu().contiguous()
        modules[name] = {"radix": weight.radix, "in_features": weight.in_features, "group_size": weight.group_size,
                         "implicit_zero": weight.implicit_zero}
    metadata = {"format": CODES_FORMAT, "version": CODES_VERSION, "grid": json.dumps(grid),
                "modules": json.dumps(modules)}
    if grid_overrides:
        metadata["grid_overrides"] = json.dumps(grid_overrides)
    return save(tensors, metadata=metadata)


def write_codes(folder: str | os.PathLike, weights: dict[str, QuantizedWeight], grid: dict,
                grid_overrides: dict | None = None) -> Path:
    """Write the sidecar of ``weights`` (a QuantizationResult's weights) into ``folder``, atomically;
    ``grid_overrides`` names the linears on a grid other than ``grid`` (mixed precision)."""
    from ..utils.io import atomic_write_bytes

    data = codes_bytes(pack_for_sidecar(weights), grid, grid_overrides)
    return atomic_write_bytes(Path(folder) / CODES_FILE, data)


def has_codes(folder: str | os.PathLike) -> bool:
    return (Path(folder) / CODES_FILE).is_file()


def load_codes(folder: str | os.PathLike) -> Codes:
    """Read ``folder``'s sidecar; every packed weight is validated against its recorded shape."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / CODES_FILE
    if not path.is_file():
        raise CodesError(f"{folder} holds no {CODES_FILE}, the codes that packing needs. Re-run `tritium quantize` "
                         "(it writes them beside fake-quant weights), or quantize with `--format packed` directly.")
    damaged = f"{path} is corrupt or truncated; re-run `tritium quantize` to write it again"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != CODES_FORMAT:
                raise CodesError(f"{path} is not a tritium codes file (format {metadata.get('format')!r})")
            if metadata.get("version") != CODES_VERSION:
                raise CodesError(f"{path} has codes version {metadata.get('version')!r}; this tritium reads version "
                                 f"{CODES_VERSION}: upgrade tritium or re-run `tritium quantize`")
            grid, modules = json.loads(metadata["grid"]), json.loads(metadata["modules"])
            overrides = json.loads(metadata.get("grid_overrides", "{}"))
            keys = set(f.keys())
            weights = {}
            for name, info in modules.items():
                parts = {part: f.get_tensor(f"{name}.{part}") if f"{name}.{part}" in keys else None for part in PARTS}
                if parts["packed"] is None or parts["scale"] is None:
                    raise CodesError(f"{path}: the codes of {name} are missing; {damaged.split('; ')[1]}")
                weights[name] = PackedWeight(parts["packed"], parts["scale"], int(info["radix"]),
                                             int(info["in_features"]), int(info["group_size"]), zero=parts["zero"],
                                             shift=parts["shift"],
                                             implicit_zero=float(info["implicit_zero"])).validate(name)
    except CodesError:
        raise
    except PackError as err:
        raise CodesError(f"{damaged}: {err}") from err
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
        raise CodesError(f"{damaged} ({err})") from err
    if not weights:
        raise CodesError(f"{path} lists no quantized linears; re-run `tritium quantize`")
    return Codes(weights, grid, overrides)
