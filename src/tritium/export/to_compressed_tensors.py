"""compressed-tensors "pack-quantized" folders: the format vLLM and transformers load.

The folder is written by the compressed-tensors package itself, following its own
lifecycle: ``apply_quantization_config`` gives each quantized linear its ``weight_scale``
and ``weight_zero_point`` (set here to tritium's), ``ModelCompressor.compress_model`` packs
the codes into int32 ``weight_packed`` (and the zero points of asymmetric grids too) and
``ModelCompressor.update_config`` writes the ``quantization_config``.

The mapping is exact. compressed-tensors stores a signed code q in [-2^(k-1), 2^(k-1)) and
an integer zero point zp in the same range, with w = scale·(q − zp); tritium stores an unsigned
code c in [0, 2^k) and a zero point z, with w = scale·(c − z). So q = c − 2^(k-1) and
zp = z − 2^(k-1): the differences, hence the weights, are the same, and the packer's own offset
(it stores q + 2^(k-1)) puts tritium's c and z back on disk. A symmetric grid's z is 2^(k-1),
compressed-tensors' implicit zp of 0, so no zero point is stored.

Not representable, and refused before writing: ternary grids (codes ±1 with a scale, and
DLT's shift), groups that do not divide a width (compressed-tensors' groups are all equal),
and zero points that are not integers on the grid (e.g. a learned fractional one).

Before the folder is final it is read back: every linear's codes and zero points unpacked
from the files must be tritium's, and compressed-tensors' own decompression must give
tritium's weights exactly in float32 (and to the rounding of the stored dtype in it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..quant.grids import QuantizedWeight, TernaryGrid, UniformGrid
from .registry import ExportError, Exporter, register_exporter

CT_FORMAT = "pack-quantized"
FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# vLLM's pack-quantized scheme (CompressedTensorsWNA16) runs these widths; compressed-tensors packs 1..8.
VLLM_BITS = (4, 8)
# vLLM fuses these projections into one matrix, whose parts must share one scheme.
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class CompressedTensorsExportError(ExportError):
    """A grid or model that the pack-quantized format cannot hold exactly; the message says what to use."""


def _require_library():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError as err:
        raise CompressedTensorsExportError(
            "the compressed-tensors export needs the compressed-tensors package: `pip install compressed-tensors` "
            "(or `pip install tritium[compressed-tensors]`)") from err


def _ternary_refusal(where: str, grid: TernaryGrid) -> CompressedTensorsExportError:
    shift = " plus a shift per group" if grid.has_shift else ""
    return CompressedTensorsExportError(
        f"{where}: the ternary grid {grid.describe()} has no compressed-tensors form: pack-quantized stores k-bit "
        f"integers with a scale (and zero point) per group, not codes in {{-1, 0, 1}} scaled by a mean{shift}. "
        "Export it with --format gguf (TQ1_0/TQ2_0) or --format tritium, or quantize on a uniform grid for vLLM "
        "(e.g. --grid uniform --bits 4 --group 128)")


@dataclass(frozen=True)
class WeightArgs:
    """The compressed-tensors QuantizationArgs of one linear, as a hashable key."""

    num_bits: int
    symmetric: bool
    strategy: str  # "group", "channel" or "tensor"
    group_size: int | None

    def describe(self) -> str:
        grouping = f"g{self.group_size}" if self.strategy == "group" else f"per {self.strategy}"
        return f"W{self.num_bits} {grouping} {'symmetric' if self.symmetric else 'asymmetric'}"

    def quantization_args(self):
        from compressed_tensors.quantization import QuantizationArgs

        return QuantizationArgs(num_bits=self.num_bits, type="int", symmetric=self.symmetric,
                                strategy=self.strategy, group_size=self.group_size)


@dataclass
class LinearPlan:
    name: str
    args: WeightArgs
    scale: Tensor  # float32, in compressed-tensors' shape
    zero_point: Tensor | None  # int8 signed, compressed-tensors' shape; None for symmetric
    codes: Tensor  # int8 signed codes [out, in]
    weight: Tensor  # float32 dequantized weight [out, in], exactly tritium's


def plan_linear(name: str, qweight: QuantizedWeight) -> LinearPlan:
    """The compressed-tensors form of one quantized linear, or a clear refusal."""
    grid, layout = qweight.grid, qweight.layout
    if isinstance(grid, TernaryGrid):
        raise _ternary_refusal(name, grid)
    if not isinstance(grid, UniformGrid) or not 1 <= grid.bits <= 8:
        raise CompressedTensorsExportError(f"{name}: grid {grid!r} has no pack-quantized form (1..8-bit integers)")
    bits, out_features, in_features = grid.bits, layout.out_features, layout.in_features
    if layout.per_tensor:
        strategy, group_size, shape = "tensor", None, (1,)
    elif grid.group == "channel":
        strategy, group_size, shape = "channel", None, (out_features, 1)
    else:
        group_size = layout.group_size
        if in_features % group_size:
            divisors = [g for g in (256, 128, 64, 32) if in_features % g == 0]
            raise CompressedTensorsExportError(
                f"{name}: grid {grid.describe()} leaves a ragged last group (groups of {group_size} do not divide "
                f"the input width {in_features}), and compressed-tensors' groups are all one size. Quantize with "
                f"a group that divides every width ({', '.join(map(str, divisors)) or 'none of 256/128/64/32'}) "
                "or per channel (--group channel)")
        strategy, shape = "group", (out_features, in_features // group_size)
    if qweight.zero is None or qweight.shift is not None:
        raise CompressedTensorsExportError(f"{name}: a uniform weight needs its zero points and no shift")
    scale, zero = qweight.scale.float().reshape(shape), qweight.zero.float().reshape(shape)
    if not bool(torch.isfinite(scale).all()) or bool((scale == 0).any()):
        raise CompressedTensorsExportError(f"{name}: the scales hold 0, NaN or Inf, which compressed-tensors' packer "
                                           "divides by; re-quantize the model")
    if not bool(torch.isfinite(zero).all()) or not bool((zero == zero.round()).all()) \
            or float(zero.min()) < 0 or float(zero.max()) > grid.max_code:
        raise CompressedTensorsExportError(
            f"{name}: grid {grid.describe()} has zero points that are not integers in 0..{grid.max_code} (e.g. "
            "learned fractional ones); compressed-tensors stores integer zero points on the code grid. Quantize "
            "with integer zero points (tritium's RTN/GPTQ/AWQ do) or on a symmetric grid (--symmetric)")
    middle = 2 ** (bits - 1)
    symmetric = grid.symmetric and bool((zero == middle).all())
    codes = (qweight.codes.to(torch.int16) - middle).to(torch.int8)
    zero_point = None if symmetric else (zero - middle).to(torch.int8)
    return LinearPlan(name, WeightArgs(bits, symmetric, strategy, group_size), scale, zero_point, codes,
                      qweight.dequantize(torch.float32))


def plan_model(model: nn.Module, weights: dict[str, QuantizedWeight]):
    """(per-linear plans, config groups as {WeightArgs: names}, ignore list of the linears kept in float)."""
    plans = {name: plan_linear(name, qweight) for name, qweight in sorted(weights.items())}
    groups: dict[WeightArgs, list[str]] = {}
    for name, plan in plans.items():
        groups.setdefault(plan.args, []).append(name)
    ignore = sorted(name for name, module in model.named_modules() if isinstance(module, nn.Linear)
                    and name not in weights)
    return plans, groups, ignore


def quantization_config(groups: dict[WeightArgs, list[str]], ignore: list[str]):
    """The compressed-tensors QuantizationConfig: one config group per distinct weight scheme.

    One scheme targets every ``Linear`` (less the ignore list), as llm-compressor writes it; with
    several (mixed precision) each group names its linears, so no precedence rule decides.
    """
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0].describe()))
    config_groups = {}
    for index, (args, names) in enumerate(ordered):
        targets = ["Linear"] if len(ordered) == 1 else sorted(names)
        config_groups[f"group_{index}"] = QuantizationScheme(targets=targets, weights=args.quantization_args(),
                                                             format=CT_FORMAT)
    return QuantizationConfig(config_groups=config_groups, ignore=ignore, format=CT_FORMAT)


def _fused_mismatches(plans: dict[str, LinearPlan]) -> list[str]:
    found = []
    for name, plan in plans.items():
        parent, _, leaf = name.rpartition(".")
        for family in FUSED:
            if leaf == family[0]:
                schemes = {plans[f"{parent}.{part}"].args for part in family if f"{parent}.{part}" in plans}
                if len(schemes) > 1:
                    found.append(parent)
    return found


@register_exporter("compressed-tensors")
class CompressedTensorsExporter(Exporter):
    kind = "folder"
    summary = "compressed-tensors pack-quantized folder (vLLM, transformers with compressed-tensors)"
    default_out = "compressed-tensors"
    # float_dtype: the float parts and the dtype the folder declares; scale_dtype: how the scales are stored
    options = {"float_dtype": "float16", "scale_dtype": "float16"}

    def check(self, grid, grid_overrides: dict, options: dict) -> None:
        for option in ("float_dtype", "scale_dtype"):
            if options[option] not in FLOAT_DTYPES:
                raise CompressedTensorsExportError(f"{option} must be one of {', '.join(FLOAT_DTYPES)}, not "
                                                   f"{options[option]!r}")
        for where, each in [("the run's grid", grid), *grid_overrides.items()]:
            if isinstance(each, TernaryGrid):
                raise _ternary_refusal(where, each)
        _require_library()

    def write(self, source, out: Path, options: dict):
        from ..models.loader import save_tokenizer
        from .api import ExportReport

        dtype, scale_dtype = FLOAT_DTYPES[options["float_dtype"]], FLOAT_DTYPES[options["scale_dtype"]]
        model = source.model.float()  # the packer re-derives codes from w / scale: exact in float32
        plans, groups, ignore = plan_model(model, source.weights)
        _check_scales(plans, dtype, "--float-dtype")
        _check_scales(plans, scale_dtype, "--scale-dtype")
        _check_floats(model, dtype)
        compressor = _compress(model, plans, groups, ignore)
        model.to(dtype)
        model.config.dtype = dtype  # runtimes compute in it; the scales were checked to fit it exactly
        for name in plans:
            module = model.get_submodule(name)
            module.weight_scale.data = module.weight_scale.data.to(scale_dtype)
        expected = _float_tensors(model, plans)
        model.save_pretrained(out, safe_serialization=True)
        if source.tokenizer is not None:
            save_tokenizer(source.tokenizer, out)
        compressor.update_config(str(out))  # the library writes its quantization_config into config.json
        read_back(out, plans, expected)
        return ExportReport(self.name, out, lines=_summary(plans, groups, ignore, options),
                            details={"groups": {a.describe(): len(n) for a, n in groups.items()}, "ignore": ignore})


def _check_scales(plans: dict[str, LinearPlan], dtype: torch.dtype, flag: str) -> None:
    """The scales must survive ``dtype`` exactly: the one they are stored in, and the one the folder declares
    (runtimes load them in it)."""
    name = str(dtype).removeprefix("torch.")
    for plan in plans.values():
        stored = plan.scale.to(dtype).float()
        if not torch.equal(stored, plan.scale):
            worst = float((stored - plan.scale).abs().max())
            raise CompressedTensorsExportError(
                f"{plan.name}: the scales are not exactly representable in {name} (max error {worst:.3g}), which "
                f"{flag} asks for: export with {flag} float16 (tritium's scales are fp16 values) or float32")


def _check_floats(model: nn.Module, dtype: torch.dtype) -> None:
    name = str(dtype).removeprefix("torch.")
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.to(dtype)).all()):
            raise CompressedTensorsExportError(f"{key} overflows {name}: export with --float-dtype float32")


def _compress(model: nn.Module, plans: dict[str, LinearPlan], groups, ignore):
    """Hand the model to compressed-tensors: set tritium's weights, scales and zero points, then pack.
    Returns the library's ModelCompressor, which also writes the folder's quantization_config."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    config = quantization_config(groups, ignore)
    with torch.no_grad():
        for name, plan in plans.items():
            model.get_submodule(name).weight.copy_(plan.weight)
        apply_quantization_config(model, config, show_progress=False)
        for name, plan in plans.items():
            module = model.get_submodule(name)
            if getattr(module, "quantization_scheme", None) is None:
                raise CompressedTensorsExportError(f"{name}: compressed-tensors did not match this linear to its "
                                                   "config group; the export cannot describe it")
            module.weight_scale.copy_(plan.scale.reshape(module.weight_scale.shape))
            if plan.zero_point is not None:
                module.weight_zero_point.copy_(plan.zero_point.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor(quantization_config=config)
    compressor.compress_model(model)
    compressor.remove_decompression_hook(model)  # the model is only saved, never run, from here on
    return compressor


def _float_tensors(model: nn.Module, plans: dict[str, LinearPlan]) -> dict[str, Tensor]:
    """Every tensor the folder must hold besides the quantized linears' weights, as it must read back."""
    quantized = {f"{name}.{part}" for name in plans
                 for part in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")}
    # not cloned: the model is not changed after this, and tied tensors must keep sharing storage
    return {key: t.detach() for key, t in model.state_dict().items() if key not in quantized}


def _load_folder_tensors(folder: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def _scheme_for(name: str, config):
    exact = [g for g in config.config_groups.values() if name in g.targets]
    by_class = [g for g in config.config_groups.values() if "Linear" in g.targets]
    if name in config.ignore or not (exact or by_class):
        return None
    return (exact or by_class)[0]


def read_back(folder: Path, plans: dict[str, LinearPlan], expected_floats: dict[str, Tensor]) -> None:
    """Read the written folder with compressed-tensors and check it is tritium's model, exactly.

    The config is parsed as transformers parses it; each linear's scheme comes from that parsed
    config; its codes and zero points are unpacked with compressed-tensors' helpers and its weight
    decompressed with compressed-tensors' PackedQuantizationCompressor.
    """
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from transformers import CompressedTensorsConfig

    def fail(message: str):
        raise CompressedTensorsExportError(f"read-back of the compressed-tensors folder failed: {message}; "
                                           "nothing was written")

    written = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    if written.get("quant_method") != "compressed-tensors" or written.get("format") != CT_FORMAT:
        fail(f"config.json's quantization_config is not compressed-tensors {CT_FORMAT}")
    config = CompressedTensorsConfig.from_dict(written).quantization_config
    compressor = BaseCompressor.get_value_from_registry(CT_FORMAT)
    tensors = _load_folder_tensors(folder)
    for name, plan in plans.items():
        scheme = _scheme_for(name, config)
        if scheme is None or plan.args.quantization_args() != scheme.weights:
            fail(f"{name}: the written config gives it {None if scheme is None else scheme.weights}, not "
                 f"{plan.args.describe()}")
        parts = {}
        for part in compressor.compression_param_names(scheme):
            if f"{name}.{part}" not in tensors:
                fail(f"{name}.{part} is missing")
            parts[part] = tensors[f"{name}.{part}"]
        shape = torch.Size(parts["weight_shape"].tolist())
        if tuple(shape) != tuple(plan.codes.shape):
            fail(f"{name}: weight_shape is {tuple(shape)}, the linear is {tuple(plan.codes.shape)}")
        if not torch.equal(unpack_from_int32(parts["weight_packed"], plan.args.num_bits, shape), plan.codes):
            fail(f"{name}: the packed codes are not tritium's codes")
        if plan.zero_point is not None and plan.args.strategy != "tensor":
            zp_shape = torch.Size([shape[0], parts["weight_scale"].shape[-1]])
            zero_point = unpack_from_int32(parts["weight_zero_point"], plan.args.num_bits, zp_shape, packed_dim=0)
            if not torch.equal(zero_point, plan.zero_point.reshape(zp_shape)):
                fail(f"{name}: the packed zero points are not tritium's")
        as_stored = compressor.decompress(parts, scheme)["weight"]
        in_float32 = compressor.decompress({**parts, "weight_scale": parts["weight_scale"].float()}, scheme)["weight"]
        if not torch.equal(in_float32, plan.weight):
            worst = float((in_float32.float() - plan.weight).abs().max())
            fail(f"{name}: compressed-tensors decompresses it to weights {worst:.3g} away from tritium's")
        if not torch.equal(as_stored, plan.weight.to(as_stored.dtype)):
            fail(f"{name}: decompressed in {as_stored.dtype} it is not tritium's weight rounded to {as_stored.dtype}")
    present = {ident: key for key, t in expected_floats.items() if key in tensors
               for ident in [t.untyped_storage().data_ptr()]}
    for key, want in expected_floats.items():
        if key in tensors:
            if tensors[key].dtype != want.dtype or not torch.equal(tensors[key], want):
                fail(f"{key} does not read back as the model's tensor")
        elif want.untyped_storage().data_ptr() not in present:  # a tied tensor is stored once
            fail(f"{key} is missing")
    compressed = {f"{name}.{part}" for name in plans
                  for part in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")}
    extra = sorted(set(tensors) - set(expected_floats) - compressed)
    if extra:
        fail(f"unexpected tensors {extra[:3]}")


def _summary(plans: dict[str, LinearPlan], groups: dict, ignore: list[str], options: dict) -> list[str]:
    float_dtype, scale_dtype = options["float_dtype"], options["scale_dtype"]
    lines = [f"compressed-tensors {CT_FORMAT}: {len(plans)} linears in {len(groups)} config group(s): "
             + "; ".join(f"{args.describe()} x{len(names)}" for args, names in groups.items()),
             f"kept in {float_dtype}: {', '.join(ignore) or 'no linear'} (plus embeddings and norms)",
             "read-back: compressed-tensors unpacks tritium's codes and zero points exactly and decompresses every "
             "linear to tritium's weight exactly in float32" + ("" if scale_dtype == "float32" else
                 f" (and, with its {scale_dtype} scales as stored, to {scale_dtype} rounding)")]
    bits = sorted({args.num_bits for args in groups})
    if any(b not in VLLM_BITS for b in bits):
        lines.append(f"note: vLLM's pack-quantized scheme runs {' and '.join(map(str, VLLM_BITS))}-bit weights; "
                     f"{'/'.join(map(str, bits))}-bit folders run in transformers with compressed-tensors")
    if any(32 % b for b in bits):
        from compressed_tensors import __version__ as version

        lines.append(f"note: compressed-tensors {version} packs {'/'.join(str(b) for b in bits if 32 % b)}-bit codes "
                     "densely across int32 words, where earlier releases left the spare bits of each word empty: read "
                     f"this folder with compressed-tensors {version} or later")
    if len(groups) > 1 and any(not args.symmetric for args in groups):
        lines.append("note: transformers cannot load this mixed folder: its dequantize=True load decompresses every "
                     "linear with one config group's scheme, and its default load fails on asymmetric zero points "
                     "(see below); vLLM reads each group's scheme")
    if any(not args.symmetric for args in groups):
        exact = "" if scale_dtype == "float32" else (
            f"; that load decompresses in the scales' {scale_dtype}, so export with --scale-dtype float32 to get "
            "tritium's weights exactly in a float32 load")
        lines.append("note: asymmetric zero points: load in transformers with from_pretrained(..., "
                     "quantization_config=CompressedTensorsConfig(dequantize=True)) (compressed-tensors 0.20.1 "
                     f"leaves the zero point unpacked on the meta device, so the default load fails on its shape){exact}")
    fused = _fused_mismatches(plans)
    if fused:
        more = f" and {len(fused) - 3} more" if len(fused) > 3 else ""
        lines.append(f"note: vLLM fuses q/k/v and gate/up into one matrix, which needs one scheme; "
                     f"{', '.join(fused[:3])}{more} mix grids there, so vLLM will refuse this folder")
    return lines
