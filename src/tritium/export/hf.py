"""Saving tritium folders that ``from_pretrained`` loads: fake-quant and packed.

The loading side, the config and quantizer registered with transformers under
``quant_method: "tritium"``, is :mod:`tritium.integrations.hf`. Folders saved with
``format: fake`` hold dequantized float weights on the quantization grid; folders saved with
``format: packed`` hold the packed codes and fp16 scales of :mod:`tritium.nn`, and may hold their
embedding and LM head in q8_0 / q4_0 blocks (:mod:`tritium.nn.block_head`). Every folder saved here
ends with a manifest (:mod:`tritium.utils.integrity`).
"""

from __future__ import annotations

# their names here before they moved down (to quant and utils), where the loader and the from_pretrained
# plug-in may use them without importing export
from ..quant.grids import grids_from_dicts
from ..utils.integrity import (
    CODES_SIDECAR,
    PACKED_SUFFIX,
    QUANT_METHOD,
    SUPPORTED_FORMATS,
    check_config_matches_tensors,
    weight_tensor_names,
)

__all__ = [
    "CODES_SIDECAR",
    "PACKED_SUFFIX",
    "QUANT_METHOD",
    "check_config_matches_tensors",
    "weight_tensor_names",
    "SUPPORTED_FORMATS",
    "grids_from_dicts",
    "save_fake_quantized",
    "save_packed",
]


def save_fake_quantized(model, tokenizer, folder, method: str, grid: dict, skip=(), method_args: dict | None = None,
                        weights: dict | None = None, grid_overrides: dict[str, dict] | None = None,
                        activations: dict | None = None):
    """Save ``model`` (already fake-quantized in place) with its ``quantization_config``, atomically.

    With ``weights`` (a QuantizationResult's weights) the folder also gets their packed codes
    (:mod:`tritium.export.codes`), so ``tritium pack`` can later pack it exactly. ``grid_overrides``
    (linear name -> grid mapping) records the linears quantized on a grid other than ``grid``.
    ``activations`` (``QuantizationResult.activations_record()``) records the activation grid of the
    quantized linears' inputs, which tritium installs again when it loads the folder.
    """
    from ..utils.integrity import write_manifest
    from ..utils.io import atomic_directory
    from ..integrations.hf import TritiumConfig
    from ..models.loader import save_tokenizer
    from .codes import write_codes

    model.config.quantization_config = TritiumConfig(
        method=method, grid=grid, format="fake", modules_not_quantized=list(skip), method_args=method_args or {},
        grid_overrides=grid_overrides, activations=activations,
    )
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        if weights and _has_packed_layout(grid, grid_overrides):
            write_codes(tmp, weights, grid, grid_overrides)
        write_manifest(tmp)  # last: it seals every file written above
    return folder


def _has_packed_layout(grid: dict, grid_overrides: dict | None) -> bool:
    """False for a grid that no packed layout holds (6-bit: fake quant and sizing only). Its folder gets no codes
    sidecar, which exists only so that `tritium pack` can pack the folder later."""
    from ..pack.layouts import PackError
    from ..quant.grids import grid_from_dict
    from ..recipes.schema import check_save_format

    try:
        check_save_format("packed", grid_from_dict(grid), grids_from_dicts(grid_overrides))
    except PackError:
        return False
    return True


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
                grid_overrides: dict[str, dict] | None = None, activations: dict | None = None):
    """Save a model packed by :func:`tritium.nn.pack_model` so that ``from_pretrained`` rebuilds it, atomically.

    An embedding and LM head stored in blocks (:func:`tritium.nn.quantize_head_`) are saved as such and
    recorded in the config's ``head`` entry; a float head is saved in ``float_dtype`` as before.

    ``float_dtype`` ("float16" or "bfloat16") stores the parts that are not packed (embeddings, norms,
    a separate LM head) in 16 bits, as float checkpoints usually are; the config keeps the model's
    compute dtype, so they load back in it. None stores them as they are. ``grid_overrides`` (linear
    name -> grid mapping) records the linears packed on a grid other than ``grid``; ``activations`` the
    activation grid of their inputs (see :func:`save_fake_quantized`).
    """
    import torch

    from ..models.loader import save_tokenizer
    from ..nn.block_head import head_record
    from ..nn.convert import module_checksum, packed_modules
    from ..utils.integrity import write_manifest
    from ..utils.io import atomic_directory

    modules = packed_modules(model)
    if not modules:
        raise ValueError("the model holds no packed modules: pack it first with tritium.nn.pack_model")
    from ..integrations.hf import TritiumConfig

    model.config.quantization_config = TritiumConfig(
        method=method, grid=grid, format="packed", modules_not_quantized=list(skip), method_args=method_args or {},
        packed_modules=sorted(modules), ternary_layout=ternary_layout, scale_dtype=scale_dtype,
        checksums={name: module_checksum(m) for name, m in sorted(modules.items())}, grid_overrides=grid_overrides,
        head=head_record(model), activations=activations,
    )
    state_dict = None
    if float_dtype is not None:
        if float_dtype not in ("float16", "bfloat16", "float32"):
            from .registry import ExportError

            raise ExportError(f"float_dtype must be float16, bfloat16 or float32, not {float_dtype!r}")
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
                save_tokenizer(tokenizer, tmp)
            write_manifest(tmp)  # last: it seals every file written above
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
    return folder
