"""Hugging Face integration: ``from_pretrained`` loads tritium folders after ``import tritium``.

The config and quantizer are registered under ``quant_method: "tritium"`` with
transformers' public hooks, so no upstream change is needed. Folders saved with
``format: fake`` hold dequantized float weights on the quantization grid; they load
as ordinary weights and the config records how they were made. Folders saved with
``format: packed`` hold the packed codes and fp16 scales of :mod:`tritium.nn`; the
quantizer swaps the named linears for packed modules before the weights load and
checks every module against the checksum recorded at save time afterwards. A packed folder may
also hold its embedding and LM head in q8_0 / q4_0 blocks (``head: {type: q8_0, ...}``, see
:mod:`tritium.nn.block_head`); without that entry the head is float, as it always was.

Every folder saved here ends with a manifest (:mod:`tritium.utils.integrity`): the quantizer
checks a local folder's files against it before the weights load, and refuses a folder whose
tensors do not match its ``quantization_config`` (packed tensors under ``format: fake``,
``packed_modules`` naming other linears), which would otherwise load with random linears.
"""

from __future__ import annotations

from pathlib import Path

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..utils.integrity import InconsistentFolderError

QUANT_METHOD = "tritium"
SUPPORTED_FORMATS = ("fake", "packed")


@register_quantization_config(QUANT_METHOD)
class TritiumConfig(QuantizationConfigMixin):
    def __init__(self, method: str = "rtn", grid: dict | None = None, format: str = "fake",
                 modules_not_quantized: list[str] | None = None, method_args: dict | None = None,
                 packed_modules: list[str] | None = None, ternary_layout: str = "base3",
                 scale_dtype: str = "float16", checksums: dict[str, str] | None = None,
                 grid_overrides: dict[str, dict] | None = None, head: dict | None = None, **kwargs):
        self.quant_method = QUANT_METHOD
        self.method = method
        self.grid = grid or {}
        # Mixed precision: full linear name -> its grid, for the linears not on ``grid``.
        self.grid_overrides = dict(grid_overrides or {})
        self.format = format
        self.modules_not_quantized = modules_not_quantized or []
        self.method_args = method_args or {}
        # format "packed" only: which linears are packed, in which layout, and their CRC-32s
        self.packed_modules = list(packed_modules or [])
        self.ternary_layout = ternary_layout
        self.scale_dtype = scale_dtype
        self.checksums = dict(checksums or {})
        # format "packed" only: the embedding / LM head storage (tritium.nn.block_head.head_record); f16 = float
        self.head = dict(head or {"type": "f16"})
        if format not in SUPPORTED_FORMATS:
            raise ValueError(
                f"tritium quantization format {format!r} is not supported by this version "
                f"(supported: {', '.join(SUPPORTED_FORMATS)}); upgrade tritium"
            )

    def to_dict(self):
        out = {
            "quant_method": QUANT_METHOD,
            "method": self.method,
            "grid": self.grid,
            "format": self.format,
            "modules_not_quantized": self.modules_not_quantized,
            "method_args": self.method_args,
        }
        if self.grid_overrides:
            out["grid_overrides"] = self.grid_overrides
        if self.format == "packed":
            out |= {"packed_modules": self.packed_modules, "ternary_layout": self.ternary_layout,
                    "scale_dtype": self.scale_dtype, "checksums": self.checksums}
            if self.head.get("type", "f16") != "f16":  # folders with a float head keep the config they always had
                out["head"] = self.head
        return out


@register_quantizer(QUANT_METHOD)
class TritiumHfQuantizer(HfQuantizer):
    requires_calibration = False

    def _process_model_before_weight_loading(self, model, **kwargs):
        config = self.quantization_config
        folder = Path(str(getattr(model.config, "name_or_path", "") or ""))
        if folder.is_dir():  # a local folder (hub downloads hold only the files they need, no manifest)
            from ..utils.integrity import verify_folder, warn_unsealed

            if verify_folder(folder) is None:
                warn_unsealed(folder)
            check_config_matches_tensors(folder, {"quant_method": QUANT_METHOD, "format": config.format,
                                                  "packed_modules": config.packed_modules})
        if config.format == "packed":  # fake-quant weights are plain float tensors: nothing to swap
            from ..nn.convert import replace_with_empty_packed
            from ..quant.grids import grid_from_dict

            if not config.packed_modules:
                raise ValueError("this tritium packed checkpoint lists no packed_modules in its quantization_config: "
                                 "the config.json is damaged; re-export the model with tritium")
            replace_with_empty_packed(model, config.packed_modules, grid_from_dict(config.grid),
                                      config.ternary_layout, config.scale_dtype,
                                      grid_overrides=grids_from_dicts(config.grid_overrides))
            from ..nn.block_head import replace_with_empty_head

            replace_with_empty_head(model, config.head)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.quantization_config.format == "packed":
            from ..nn.convert import verify_packed_model

            from ..nn.block_head import verify_head

            verify_packed_model(model, self.quantization_config.checksums)
            verify_head(model, self.quantization_config.head)
        return model

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self):
        return False


PACKED_SUFFIX = ".packed"
CODES_SIDECAR = "tritium_codes.safetensors"  # read by tritium pack/export, never by from_pretrained


def weight_tensor_names(folder: str | Path) -> list[str]:
    """Names of the tensors ``from_pretrained`` reads from ``folder`` (model.safetensors or its shards),
    from the files' headers only."""
    import json

    from ..utils.integrity import DamagedFileError, safetensors_tensor_ranges

    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DamagedFileError(f"{index} is corrupt ({err}); re-export the model with tritium") from err
    else:
        return []
    return [name for path in files if path.is_file() for name in safetensors_tensor_ranges(path)]


def check_config_matches_tensors(folder: str | Path, qconfig: dict | None) -> None:
    """Refuse a folder whose packed tensors and ``quantization_config`` disagree, before anything loads.

    Packed codes (``<linear>.packed``) are only read into packed modules, which the quantizer builds
    from ``format: packed`` and ``packed_modules``; without them transformers drops the codes and
    leaves those linears randomly initialised, with a warning at best."""
    packed = sorted({n[: -len(PACKED_SUFFIX)] for n in weight_tensor_names(folder) if n.endswith(PACKED_SUFFIX)})
    tritium = isinstance(qconfig, dict) and qconfig.get("quant_method") == QUANT_METHOD
    fix = "its config.json is damaged or was replaced: re-export the model with tritium (`tritium pack`)"
    if not tritium:
        if packed:
            raise InconsistentFolderError(
                f"{folder} holds packed tritium weights ({len(packed)} linears, e.g. {packed[0]}{PACKED_SUFFIX}) but "
                f"its config.json has no tritium quantization_config, so they would load as random linears; {fix}")
        return
    fmt = qconfig.get("format")
    if fmt != "packed":
        if packed:
            raise InconsistentFolderError(
                f"{folder}: config.json says format {fmt!r} but the folder holds packed weights ({len(packed)} "
                f"linears, e.g. {packed[0]}{PACKED_SUFFIX}), which would load as random linears; {fix}")
        return
    listed = set(qconfig.get("packed_modules") or ())
    if not packed:
        raise InconsistentFolderError(f"{folder}: config.json says format 'packed' but the weights hold no packed "
                                      f"tensors; {fix}")
    if listed != set(packed):
        extra, unlisted = sorted(listed - set(packed)), sorted(set(packed) - listed)
        raise InconsistentFolderError(
            f"{folder}: the packed_modules of config.json do not match the packed weights"
            + (f"; listed but not in the weights: {', '.join(extra[:3])}" if extra else "")
            + (f"; in the weights but not listed: {', '.join(unlisted[:3])}" if unlisted else "") + f"; {fix}")


def grids_from_dicts(grid_overrides: dict | None) -> dict:
    """A saved ``grid_overrides`` mapping (linear name -> grid mapping) as grid objects; {} for None."""
    from ..quant.grids import grid_from_dict

    return {name: grid_from_dict(spec) for name, spec in (grid_overrides or {}).items()}


def save_fake_quantized(model, tokenizer, folder, method: str, grid: dict, skip=(), method_args: dict | None = None,
                        weights: dict | None = None, grid_overrides: dict[str, dict] | None = None):
    """Save ``model`` (already fake-quantized in place) with its ``quantization_config``, atomically.

    With ``weights`` (a QuantizationResult's weights) the folder also gets their packed codes
    (:mod:`tritium.export.codes`), so ``tritium pack`` can later pack it exactly. ``grid_overrides``
    (linear name -> grid mapping) records the linears quantized on a grid other than ``grid``.
    """
    from ..utils.integrity import write_manifest
    from ..utils.io import atomic_directory
    from .codes import write_codes

    model.config.quantization_config = TritiumConfig(
        method=method, grid=grid, format="fake", modules_not_quantized=list(skip), method_args=method_args or {},
        grid_overrides=grid_overrides,
    )
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if weights:
            write_codes(tmp, weights, grid, grid_overrides)
        write_manifest(tmp)  # last: it seals every file written above
    return folder


def _state_dict_in(model, modules: dict, dtype) -> dict:
    """The model's state dict with its float tensors in ``dtype``; packed codes and group parameters keep theirs."""
    kept = {f"{name}.{part}" for name in modules for part in ("packed", "scale", "zero", "shift")}
    # block heads' fp16 scales keep their dtype too (their codes are integers)
    kept |= {f"{name}.scale" for name, m in model.named_modules() if getattr(m, "is_block_head", False)}
    converted: dict[int, object] = {}  # tied tensors (embedding and LM head) stay one tensor
    state = {}
    for key, tensor in model.state_dict().items():
        if key in kept or not tensor.is_floating_point():
            state[key] = tensor
        else:
            ident = tensor.untyped_storage().data_ptr()
            if ident not in converted:
                converted[ident] = tensor.to(dtype)
            state[key] = converted[ident]
    return state


def save_packed(model, tokenizer, folder, method: str, grid: dict, skip=(), method_args: dict | None = None,
                ternary_layout: str = "base3", scale_dtype: str = "float16", float_dtype: str | None = None,
                grid_overrides: dict[str, dict] | None = None):
    """Save a model packed by :func:`tritium.nn.pack_model` so that ``from_pretrained`` rebuilds it, atomically.

    An embedding and LM head stored in blocks (:func:`tritium.nn.quantize_head_`) are saved as such and
    recorded in the config's ``head`` entry; a float head is saved in ``float_dtype`` as before.

    ``float_dtype`` ("float16" or "bfloat16") stores the parts that are not packed (embeddings, norms,
    a separate LM head) in 16 bits, as float checkpoints usually are; the config keeps the model's
    compute dtype, so they load back in it. None stores them as they are. ``grid_overrides`` (linear
    name -> grid mapping) records the linears packed on a grid other than ``grid``.
    """
    import torch

    from ..nn.block_head import head_record
    from ..nn.convert import module_checksum, packed_modules
    from ..utils.integrity import write_manifest
    from ..utils.io import atomic_directory

    modules = packed_modules(model)
    if not modules:
        raise ValueError("the model holds no packed modules: pack it first with tritium.nn.pack_model")
    model.config.quantization_config = TritiumConfig(
        method=method, grid=grid, format="packed", modules_not_quantized=list(skip), method_args=method_args or {},
        packed_modules=sorted(modules), ternary_layout=ternary_layout, scale_dtype=scale_dtype,
        checksums={name: module_checksum(m) for name, m in sorted(modules.items())}, grid_overrides=grid_overrides,
        head=head_record(model),
    )
    state_dict = None
    if float_dtype is not None:
        if float_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"float_dtype must be float16, bfloat16 or float32, not {float_dtype!r}")
        state_dict = _state_dict_in(model, modules, getattr(torch, float_dtype))
    # A model loaded from a tritium folder carries our quantizer, and transformers lets a quantizer's
    # (empty) state dict replace the one passed in: set it aside while saving.
    quantizer = getattr(model, "hf_quantizer", None)
    if state_dict is not None and quantizer is not None:
        model.hf_quantizer = None
    try:
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_manifest(tmp)  # last: it seals every file written above
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
    return folder
