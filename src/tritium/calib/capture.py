"""Capture what the first decoder block receives: hidden states plus the keyword
arguments (attention mask, position embeddings, position ids) every block is called with.

The model's own forward builds those arguments (Gemma's embedding scaling, Qwen2's and
Gemma's per-layer sliding-window masks, Gemma 3's per-layer rotary tables), so rather
than re-deriving them per family we swap each block for a recorder that stores its
call and passes the hidden states through unchanged. One cheap forward per sample runs
only the embedding, the rotary tables and the mask builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..utils.errors import TritiumError
from ..models.adapters import DecoderLayout

# Keyword arguments that belong to generation-time caching, never to a calibration pass.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "use_cache", "cache_position")


class CalibrationInputError(TritiumError, ValueError):
    """Calibration data that cannot drive the pipeline; the message says how to fix it."""


class NonFiniteError(TritiumError, RuntimeError):
    """NaN or Inf appeared in activations or a loss; the message names the block and layer."""


@dataclass
class BlockInputs:
    """The first block's inputs on every calibration sample, and each block's call arguments.

    ``hidden`` is ``[n_samples, seqlen, hidden_size]``. ``layer_kwargs[i]`` are the keyword
    arguments block ``i`` receives, recorded for a batch of one sample: their leading
    dimension of 1 broadcasts over any batch.
    """

    hidden: Tensor
    layer_kwargs: list[dict]


def model_context(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def check_calibration_ids(model, input_ids) -> Tensor:
    """Validate calibration token ids ``[n_samples, seqlen]`` and return them as int64."""
    if not isinstance(input_ids, Tensor):
        raise CalibrationInputError(
            f"calibration data must be a tensor of token ids [n_samples, seqlen], got {type(input_ids).__name__}; "
            "build it with tritium.data.calibration_samples"
        )
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise CalibrationInputError(
            f"calibration token ids must have shape [n_samples, seqlen], got {tuple(input_ids.shape)}"
        )
    n_samples, seqlen = input_ids.shape
    if n_samples < 1:
        raise CalibrationInputError(
            "the calibration set is empty: the pipeline needs at least one sample; raise --calib-samples (calib.samples)"
        )
    if seqlen < 2:
        raise CalibrationInputError(f"calibration samples of {seqlen} token(s) are too short: use at least 2 tokens")
    if input_ids.is_floating_point():
        if not torch.isfinite(input_ids).all():
            raise CalibrationInputError(
                "the calibration inputs hold NaN or Inf: token ids must be finite integers; "
                "re-tokenize the calibration text"
            )
        if not torch.equal(input_ids, input_ids.round()):
            raise CalibrationInputError("calibration inputs must be integer token ids, got fractional values")
        input_ids = input_ids.long()
    input_ids = input_ids.long()
    context = model_context(model)
    if context is not None and seqlen > context:
        raise CalibrationInputError(
            f"calibration sequence length {seqlen} exceeds the model's context of {context} tokens: "
            f"use --calib-seqlen {context} or less"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (input_ids.min() < 0 or input_ids.max() >= vocab):
        raise CalibrationInputError(
            f"calibration token ids must lie in [0, {vocab}), got values from {int(input_ids.min())} to "
            f"{int(input_ids.max())}: were they made with this model's tokenizer?"
        )
    return input_ids


class _StopForward(Exception):
    pass


class _BlockRecorder(nn.Module):
    """Stands in for one decoder block: records its call, returns the hidden states untouched."""

    def __init__(self, block: nn.Module, sink: dict, index: int, last: bool):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: the recorder owns no weights
        self._sink, self._index, self._last = sink, index, last

    def __getattr__(self, name):  # attributes a model reads off its blocks (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        extra = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS and k != "hidden_states"}
        if args[1:]:
            raise CalibrationInputError(
                "the decoder blocks of this model take positional arguments beyond the hidden states; "
                "tritium's calibration pipeline supports the keyword-call layout of transformers >= 5"
            )
        if self._index == 0:
            self._sink["hidden"] = hidden
        self._sink.setdefault("kwargs", {})[self._index] = extra
        if self._last:
            raise _StopForward  # skip the final norm and LM head: nothing downstream is needed
        return hidden


def _to(obj, device):
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def move_kwargs(kwargs: dict, device) -> dict:
    return _to(kwargs, device)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, layout: DecoderLayout, input_ids: Tensor) -> BlockInputs:
    """Run the model's embedding stage on each sample and record what every block would receive.

    The model stays where it is (normally the CPU); the blocks do not run. Hidden states come
    back on the CPU in the embedding's dtype.
    """
    input_ids = check_calibration_ids(model, input_ids)
    device = layout.embed_tokens.weight.device
    originals = list(layout.blocks)
    n = len(originals)
    hidden_states, layer_kwargs = [], None
    try:
        for sample in input_ids:
            sink: dict = {}
            for i, block in enumerate(originals):
                layout.blocks[i] = _BlockRecorder(block, sink, i, last=(i == n - 1))
            try:
                model(input_ids=sample.unsqueeze(0).to(device), use_cache=False)
            except _StopForward:
                pass
            finally:
                for i, block in enumerate(originals):
                    layout.blocks[i] = block
            if "hidden" not in sink or len(sink.get("kwargs", {})) != n:
                raise CalibrationInputError(
                    f"the model's forward did not call all {n} decoder blocks in order; tritium cannot capture "
                    "their inputs for this architecture"
                )
            hidden_states.append(sink["hidden"].to("cpu"))
            if layer_kwargs is None:
                layer_kwargs = [move_kwargs(sink["kwargs"][i], "cpu") for i in range(n)]
    finally:
        for i, block in enumerate(originals):
            layout.blocks[i] = block
    hidden = torch.cat(hidden_states, dim=0)
    if not torch.isfinite(hidden).all():
        raise NonFiniteError(
            f"the embedding output (the input of block 0, {layout.blocks_path}.0) holds NaN or Inf on "
            f"{int((~torch.isfinite(hidden)).any(-1).any(-1).sum())} calibration sample(s): "
            "check the embedding weights of the checkpoint"
        )
    return BlockInputs(hidden=hidden, layer_kwargs=layer_kwargs)
