"""tritium's own packed HF folder (packed codes + fp16 scales that ``from_pretrained`` loads after
``import tritium``), registered as the ``tritium`` export format: what `tritium pack` writes, from any source."""

from __future__ import annotations

from pathlib import Path

import torch

from ..quant.grids import UniformGrid
from .registry import ExportError, Exporter, register_exporter

FLOAT_DTYPES = ("float16", "bfloat16", "float32")


@register_exporter("tritium")
class TritiumPackedExporter(Exporter):
    kind = "folder"
    summary = "tritium packed folder (packed codes + fp16 scales; from_pretrained after `import tritium`)"
    default_out = "packed"
    options = {"float_dtype": "float16", "ternary_layout": "base3", "scale_dtype": "float16"}
    runs_online_rotations = True  # tritium's loader installs them again from the config

    def check(self, grid, grid_overrides: dict, options: dict) -> None:
        from ..pack.layouts import TERNARY_LAYOUTS, uniform_radix
        from ..pack.packed import SCALE_DTYPES

        if options["float_dtype"] not in FLOAT_DTYPES:
            raise ExportError(f"float_dtype must be one of {', '.join(FLOAT_DTYPES)}, not {options['float_dtype']!r}")
        if options["ternary_layout"] not in TERNARY_LAYOUTS:
            raise ExportError(f"ternary_layout must be one of {', '.join(TERNARY_LAYOUTS)}, not "
                              f"{options['ternary_layout']!r}")
        if options["scale_dtype"] not in SCALE_DTYPES:
            raise ExportError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, not {options['scale_dtype']!r}")
        for each in [grid, *grid_overrides.values()]:
            if isinstance(each, UniformGrid):
                uniform_radix(each.bits)  # a grid without a packed layout (6-bit) fails here, before loading

    def write(self, source, out: Path, options: dict):
        from ..nn import pack_model, packed_bits_report, packed_modules
        from ..quant.grids import grid_to_dict
        from .api import ExportReport
        from .hf import save_packed

        config = source.tritium_config
        model = pack_model(source.model, source.weights, options["ternary_layout"], options["scale_dtype"])
        overrides = {name: grid_to_dict(g) for name, g in sorted(source.grid_overrides.items())}
        # save_packed writes atomically itself: it replaces the (empty) temporary folder it is given
        save_packed(model, source.tokenizer, out, config.get("method", "unknown"), grid_to_dict(source.grid),
                    config.get("modules_not_quantized") or (), config.get("method_args") or {},
                    ternary_layout=options["ternary_layout"], scale_dtype=options["scale_dtype"],
                    float_dtype=options["float_dtype"], grid_overrides=overrides or None)
        read_back(out, packed_modules(model), source.weights)
        report = packed_bits_report(model)
        lines = [f"tritium packed: {len(report['layers'])} linears, {report['bits_per_weight']:.3f} bits/weight "
                 f"({options['ternary_layout']}, {options['scale_dtype']} scales, float parts in "
                 f"{options['float_dtype']})",
                 "read-back: every packed tensor reads back bit for bit and dequantizes to tritium's weight exactly"]
        return ExportReport(self.name, out, lines=lines, details={"bits": report})


def read_back(folder: Path, modules: dict, weights: dict) -> None:
    """Every packed module's tensors in the files must be the module's own, and dequantize to its codes' weight."""
    from safetensors import safe_open

    from ..pack.packed import PackedWeight

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({key: f.get_tensor(key) for key in f.keys()})
    for name, module in modules.items():
        parts = {}
        for part in ("packed", "scale", "zero", "shift"):
            mine = getattr(module, part)
            theirs = tensors.get(f"{name}.{part}")
            if (mine is None) != (theirs is None) or (mine is not None and not torch.equal(mine.cpu(), theirs)):
                raise ExportError(f"read-back of the packed folder failed: {name}.{part} differs from the packed "
                                  "module; nothing was written")
            parts[part] = theirs
        weight = PackedWeight(parts["packed"], parts["scale"], module.radix, module.in_features, module.group_size,
                              zero=parts["zero"], shift=parts["shift"], implicit_zero=module.implicit_zero)
        if not torch.equal(weight.dequantize(torch.float32), weights[name].dequantize(torch.float32)):
            raise ExportError(f"read-back of the packed folder failed: {name} does not dequantize to its codes' "
                              "weight; nothing was written")
