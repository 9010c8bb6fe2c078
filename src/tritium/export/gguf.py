"""Write a quantized Llama, Mistral, Qwen2, Qwen3, Gemma or Gemma 2 model as a GGUF file that llama.cpp runs.

Decoder linears quantized on a GGUF grid go to that grid's own type, bit for bit; ternary
ones go to TQ1_0/TQ2_0 where they fit, else to an exact fallback
(:mod:`tritium.export.gguf_tensors`); norms stay F32; embeddings and the output head
take the type the user chooses. Tensor names come from the ``gguf`` package's own
HF→GGUF name map, the vocabulary from the model's HF tokenizer through gguf's vocab helpers
(:mod:`tritium.export.gguf_vocab`). Everything llama.cpp cannot reproduce (an unknown family,
activation, rope scaling or tokenizer) is refused before a file is created. The file is validated
after writing: every tensor is read back, dequantized with gguf's reference code and compared with
the model's weights, and llama.cpp, where installed, must tokenize as HF does. It is sealed with its
own sha256 (:mod:`tritium.utils.gguf_file`), so a damaged copy is refused on load instead of giving
different weights.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from ..utils.errors import TritiumError
from ..utils.gguf_file import CHECKSUM_KEY, CHECKSUM_PLACEHOLDER, MARKER_KEY, MARKER_VALUE, check_gguf, seal_gguf
from ..utils.io import TEMPORARY_SUFFIX, temporary_prefix
from ..models.adapters import decoder_layout
from ..quant.grids import GGUFBlockGrid, QuantizedWeight
from .gguf_tensors import TERNARY_TYPES, choose_tensor_type, decode_tensor, encode_tensor
from .gguf_vocab import check_llama_cpp_tokenization, read_hf_vocab


@dataclass(frozen=True)
class GGUFArch:
    """How one HF family maps onto a llama.cpp architecture."""

    name: str  # llama.cpp's architecture name (the metadata key prefix)
    arch: gguf.MODEL_ARCH
    # llama.cpp's "llama" rope rotates interleaved pairs, HF's rotate_half the two halves of each head: q/k
    # rows (weights and biases) are reordered for it. Qwen2/3 and Gemma run llama.cpp's NEOX rope, HF's order.
    permute_rope: bool
    # The MLP activations llama.cpp's graph for the architecture computes (HF's names for them).
    activations: tuple[str, ...] = ("silu",)
    # Gemma's RMSNorm scales by (1 + w); llama.cpp reads the scale itself, so 1 is added on export.
    norm_offset: float = 0.0
    # llama.cpp's gemma graph always reuses the embedding as the output head.
    needs_tied_head: bool = False
    # Only llama.cpp's llama graph reads per-frequency rope factors (the rope_freqs tensor Llama-3.1+ needs).
    rope_factors: bool = False
    # Gemma 2's graph: logit soft-capping (attention and output), sliding-window attention on every other layer.
    gemma2: bool = False


ARCHITECTURES = {
    "llama": GGUFArch("llama", gguf.MODEL_ARCH.LLAMA, permute_rope=True, rope_factors=True),
    "mistral": GGUFArch("llama", gguf.MODEL_ARCH.LLAMA, permute_rope=True, rope_factors=True),
    "qwen2": GGUFArch("qwen2", gguf.MODEL_ARCH.QWEN2, permute_rope=False),
    "qwen3": GGUFArch("qwen3", gguf.MODEL_ARCH.QWEN3, permute_rope=False),
    # llama.cpp's gemma graph scales the embedding by sqrt(hidden) itself and computes GELU's tanh form.
    "gemma": GGUFArch("gemma", gguf.MODEL_ARCH.GEMMA, permute_rope=False, activations=(
        "gelu_pytorch_tanh", "gelu_new", "gelu_fast"), norm_offset=1.0, needs_tied_head=True),
    # gemma2 also: the sandwich norms (post-attention, pre- and post-feedforward; gguf's name map knows them), all
    # with the (1 + w) offset, and its soft caps and sliding window (_add_architecture_metadata).
    "gemma2": GGUFArch("gemma2", gguf.MODEL_ARCH.GEMMA2, permute_rope=False, activations=(
        "gelu_pytorch_tanh", "gelu_new", "gelu_fast"), norm_offset=1.0, needs_tied_head=True, gemma2=True),
}
EMBEDDING_TYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16, "q8_0": GGMLQuantizationType.Q8_0}
FILE_TYPES = {"tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0, "tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0}


class GGUFExportError(TritiumError, ValueError):
    """The model or the options cannot be written as GGUF; the message says what to change."""


@dataclass
class GGUFReport:
    path: str
    tensor_types: dict[str, str] = field(default_factory=dict)
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    linear_bits: float = 0.0
    linear_params: int = 0
    total_bits: float = 0.0  # every tensor's data: linears, embeddings, output head, norms
    total_params: int = 0
    file_bytes: int = 0
    max_abs_error: float = 0.0
    vocabulary: str = ""  # what was written as the tokenizer, and by which gguf helper
    tokenization_checked: bool = False  # llama.cpp tokenized the probe texts as HF does
    notes: list[str] = field(default_factory=list)  # where llama.cpp may still differ from the model

    @property
    def linear_bits_per_weight(self) -> float:
        return self.linear_bits / max(self.linear_params, 1)

    @property
    def total_bits_per_weight(self) -> float:
        """Bits per weight over all the file's tensors (the header and vocabulary not counted)."""
        return self.total_bits / max(self.total_params, 1)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for qtype in self.tensor_types.values():
            counts[qtype] = counts.get(qtype, 0) + 1
        return counts


def rope_row_permutation(out_features: int, n_heads: int) -> torch.Tensor:
    """Row order llama.cpp expects for q/k: HF keeps each head's rotary halves apart,
    llama.cpp interleaves them, so within a head row (half h, index i) moves to 2·i + h."""
    head_dim = out_features // n_heads
    rows = torch.arange(out_features).view(n_heads, 2, head_dim // 2)
    return rows.transpose(1, 2).reshape(-1)


def _permute_rows(qw: QuantizedWeight, perm: torch.Tensor) -> QuantizedWeight:
    def rows(t):  # per-tensor statistics ([1, 1]) apply to every row unchanged
        return t if t is None or t.shape[0] == 1 else t[perm]

    return replace(qw, codes=qw.codes[perm], scale=rows(qw.scale), zero=rows(qw.zero), shift=rows(qw.shift))


def _float_tensor(t: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    array = t.detach().float().cpu().numpy()
    if qtype == GGMLQuantizationType.F32:
        return array
    if qtype == GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


def _copy_tokenizer_fields(writer: GGUFWriter, source: str | os.PathLike) -> None:
    check_gguf(source)  # a damaged source fails here, named, not inside numpy
    reader = GGUFReader(source)
    for key, fld in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = fld.types[0]
        sub_type = fld.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, fld.contents(), vtype, sub_type=sub_type)


# HF families llama.cpp runs under a graph tritium does not write: why not, said in the refusal.
NOT_WRITTEN = {
    "gemma3_text": "llama.cpp's gemma3 graph also needs the q/k norms, the 5:1 sliding-window pattern with its own "
                   "rope base and the per-layer-type rope scaling written",
}
NOT_WRITTEN["gemma3"] = NOT_WRITTEN["gemma3_text"]


EXPORT_INSTEAD = "export it with --format compressed-tensors or --format tritium instead"


def gguf_architecture_of(model_type: str | None, architectures=(), what: str = "this model",
                         fix: str = EXPORT_INSTEAD) -> GGUFArch:
    """The llama.cpp architecture for a config's ``model_type`` (or, without one, its HF ``architectures``),
    from the config alone, so that a family GGUF export cannot write is refused before any weight loads.
    Raises a GGUFExportError naming the family and the ones tritium writes."""
    if not model_type:
        by_class = {f"{name.capitalize()}ForCausalLM": name for name in ARCHITECTURES}
        model_type = next((by_class[a] for a in architectures or () if a in by_class), None)
        if model_type is None:
            model_type = ", ".join(architectures or ()) or "unknown"
    spec = ARCHITECTURES.get(model_type)
    if spec is not None:
        return spec
    graphs = ", ".join(sorted({a.name for a in ARCHITECTURES.values()}))
    why = f" ({NOT_WRITTEN[model_type]}, which tritium's writer does not do yet)" if model_type in NOT_WRITTEN else ""
    raise GGUFExportError(
        f"GGUF export writes the {', '.join(ARCHITECTURES)} families (llama.cpp's {graphs} architectures); "
        f"{what} is {model_type!r}, and {model_type!r} is not one of them{why}: {fix}")


def config_fields(config) -> dict:
    """The config.json fields :func:`check_gguf_config` reads, from a loaded model's config (the instance's own
    values: ``PretrainedConfig.to_dict`` would put the class's model_type over a changed one)."""
    return {key: getattr(config, key, None) for key in ("model_type", "architectures", "hidden_act",
                                                         "hidden_activation")}


def check_gguf_config(config: dict, what: str = "this model", fix: str = EXPORT_INSTEAD) -> GGUFArch:
    """What config.json alone says GGUF export cannot write (checked before the weights load): a family
    llama.cpp has no graph for that tritium writes, or an MLP activation that graph does not compute.
    ``fix`` ends the message: what to do instead."""
    spec = gguf_architecture_of(config.get("model_type"), config.get("architectures") or (), what, fix)
    activation = config.get("hidden_activation") or config.get("hidden_act")
    # a config without either key (a GGUF header's) leaves the activation to the loaded model's check
    if ("hidden_activation" in config or "hidden_act" in config) and activation not in spec.activations:
        raise GGUFExportError(
            f"this {config.get('model_type')} model's MLP uses {activation!r}, but llama.cpp's {spec.name} graph "
            f"computes {' / '.join(spec.activations)}: its logits would differ; {fix}")
    return spec


def gguf_architecture(model) -> GGUFArch:
    """The llama.cpp architecture for ``model``, or a GGUFExportError naming the ones tritium writes.

    Refused as well: what llama.cpp's graph for the architecture would compute differently (another MLP
    activation, Gemma with its own output head)."""
    config = model.config
    spec = check_gguf_config(config_fields(config))
    if spec.needs_tied_head and not _head_is_the_embedding(model):
        raise GGUFExportError(
            f"llama.cpp's {spec.name} architecture reuses the embedding as the output head, but this model has "
            "its own lm_head: such a file would compute different logits; export it with --format tritium")
    if spec.gemma2:
        _check_gemma2(config)
    return spec


def _check_gemma2(config) -> None:
    """What llama.cpp's gemma2 graph computes without reading it from the file: the query scale 1/sqrt(head_dim)
    (hidden/heads for the 46-layer 27B), soft-capping of the attention logits (50 unless written) and of the
    output, sliding windows on the even layers, causal attention."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    expected = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == 46 else head_dim
    problems = []
    if getattr(config, "query_pre_attn_scalar", None) != expected:
        problems.append(f"its queries are scaled by query_pre_attn_scalar {config.query_pre_attn_scalar}, llama.cpp's "
                        f"gemma2 graph by its head_dim {expected}")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None) is None:
            problems.append(f"it has no {key}, which llama.cpp's gemma2 graph always applies")
    sliding = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(config.num_hidden_layers)]
    if getattr(config, "sliding_window", None) is not None and list(getattr(config, "layer_types", sliding)) != sliding:
        problems.append("its sliding-window layers are not every other one from the first, as llama.cpp's are")
    if getattr(config, "use_bidirectional_attention", None):
        problems.append("its attention is bidirectional")
    if problems:
        raise GGUFExportError(f"this gemma2 model would run differently in llama.cpp: {'; '.join(problems)}; export "
                              "it with --format compressed-tensors")


def rope_frequency_factors(model, spec: GGUFArch) -> torch.Tensor | None:
    """What llama.cpp divides each rope frequency by, for a model whose rope is scaled (Llama-3.1's "llama3",
    "linear"); None for plain rope. Read from the frequencies the HF model itself uses, so that any scaling
    that only rescales frequencies is written exactly; the rest is refused."""
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rotary = next((m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)), None)
    if rotary is None:
        raise GGUFExportError(f"no rotary embedding (a module with inv_freq) was found in this {config.model_type} "
                              "model: GGUF export needs its rope frequencies")
    if rope_type in ("dynamic", "yarn", "longrope") or float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise GGUFExportError(f"this model's rope scaling {rope_type!r} changes with the sequence length or scales "
                              "attention, which tritium does not write for llama.cpp: export it with --format "
                              "compressed-tensors")
    inv_freq = rotary.inv_freq.detach().float().cpu()
    dim = 2 * inv_freq.numel()
    theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    plain = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # HF's unscaled rope
    if torch.allclose(inv_freq, plain, rtol=1e-6, atol=0.0):
        return None
    if not spec.rope_factors:
        raise GGUFExportError(f"this {config.model_type} model scales its rope ({rope_type!r}), and llama.cpp's "
                              f"{spec.name} graph reads no per-frequency factors: export it with --format "
                              "compressed-tensors")
    return plain / inv_freq


def _head_is_the_embedding(model) -> bool:
    """By the weights, not the config: rotation unties a tied head (models/rotation.py)."""
    layout = decoder_layout(model)
    head, embedding = layout.lm_head, layout.embed_tokens.weight
    return head is None or head.weight is embedding or (
        head.weight.shape == embedding.shape and torch.equal(head.weight, embedding))


def file_type_of(linear_types: list[GGMLQuantizationType], ttype: str):
    """general.file_type: the type most decoder linears have (``ttype``'s when there are none, or it has none)."""
    if not linear_types:
        return FILE_TYPES[ttype]
    most = max(set(linear_types), key=lambda t: (linear_types.count(t), t.value))
    if most in (GGMLQuantizationType.Q3_K, GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K):
        return getattr(gguf.LlamaFileType, f"MOSTLY_{most.name}_S")  # the file type with it in most tensors
    return getattr(gguf.LlamaFileType, f"MOSTLY_{most.name}", FILE_TYPES[ttype])


def _add_architecture_metadata(writer: GGUFWriter, config, n_vocab: int, spec: GGUFArch) -> None:
    """The hyperparameters llama.cpp's llama, qwen2, qwen3, gemma and gemma2 graphs read (under the architecture's
    prefix)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)  # Gemma's and Qwen3's head_dim need not be hidden / heads
    writer.add_value_length(head_dim)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    if spec.gemma2:  # checked by _check_gemma2: both soft caps are set
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
        if config.sliding_window is not None:
            writer.add_sliding_window(int(config.sliding_window))


def _sliding_window_note(config) -> str | None:
    """llama.cpp's llama and qwen2/3 graphs attend over the whole context; a sliding window shorter than it
    (Mistral v0.1's 4096) then makes long sequences differ."""
    window = getattr(config, "sliding_window", None)
    if window is None or not getattr(config, "use_sliding_window", True) or window >= config.max_position_embeddings:
        return None
    return (f"the model attends over a sliding window of {window} tokens and llama.cpp over the whole context: "
            f"outputs match for sequences up to {window} tokens")


def write_gguf(model, path: str | os.PathLike, weights: dict[str, QuantizedWeight], ttype: str = "tq1_0",
               allow_fallback: bool = True, embedding_type: str = "f16", tokenizer=None,
               tokenizer_gguf: str | os.PathLike | None = None, validate: bool = True,
               overwrite: bool = False) -> GGUFReport:
    """Write ``model`` with its quantized linears ``weights`` (full name → QuantizedWeight) to ``path``.

    The vocabulary comes from ``tokenizer`` (the model's HF tokenizer), or is copied from the GGUF file
    ``tokenizer_gguf``. An existing ``path`` is replaced only with ``overwrite=True``, and only once the
    new file is complete and validated; a failed export leaves no file behind.
    """
    if ttype not in TERNARY_TYPES:
        raise GGUFExportError(f"--type must be one of {', '.join(TERNARY_TYPES)}, not {ttype!r}")
    if embedding_type not in EMBEDDING_TYPES:
        raise GGUFExportError(f"embedding type must be one of {', '.join(EMBEDDING_TYPES)}, not {embedding_type!r}")
    config = model.config
    spec = gguf_architecture(model)
    if tokenizer is None and tokenizer_gguf is None:
        raise GGUFExportError("GGUF files carry the vocabulary: pass the tokenizer or a GGUF file to copy it from")
    layout = decoder_layout(model)
    n_vocab = layout.embed_tokens.weight.shape[0]
    rope_factors = rope_frequency_factors(model, spec)
    vocab = read_hf_vocab(tokenizer, n_vocab) if tokenizer_gguf is None else None
    path = Path(path)
    if path.is_dir():
        raise GGUFExportError(f"{path} is a folder: a GGUF export is one file; choose a file name such as "
                              f"{path / 'model.gguf'}")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise GGUFExportError(f"{path} already exists: pass overwrite=True (--overwrite) to replace it, or choose "
                              "another path")
    name_map = gguf.get_tensor_name_map(spec.arch, layout.num_blocks)
    tied = layout.lm_head is None or layout.lm_head.weight is layout.embed_tokens.weight
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{temporary_prefix(path)}{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")  # cleaned if orphaned
    report = GGUFReport(str(path))
    if not spec.gemma2 and (note := _sliding_window_note(config)):  # llama.cpp's gemma2 graph has the windows
        report.notes.append(note)
    expected: dict[str, np.ndarray] = {}
    exact: set[str] = set()  # tensors on a GGUF grid: they must read back bit for bit
    linear_types: list[GGMLQuantizationType] = []
    writer = GGUFWriter(tmp, spec.name)
    try:
        _add_architecture_metadata(writer, config, n_vocab, spec)
        if vocab is None:
            _copy_tokenizer_fields(writer, tokenizer_gguf)
            report.vocabulary = f"copied from {tokenizer_gguf}"
        else:
            vocab.add_to(writer)
            report.vocabulary = vocab.describe()
            report.notes += vocab.notes
        if rope_factors is not None:
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_factors.numpy())
            report.tensor_types["rope_freqs.weight"] = "F32"
        for hf_name, param in model.state_dict().items():
            if hf_name.startswith("lm_head") and tied:
                continue
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GGUFExportError(f"no GGUF name for tensor {hf_name!r}")
            module_name, kind = hf_name.rsplit(".", 1)
            rope_rows = _rope_rows(spec, config, module_name, param.shape[0])
            if module_name in weights and kind == "weight":  # a quantized linear's bias (Qwen2) stays float
                qw = weights[module_name]
                if rope_rows is not None:
                    qw = _permute_rows(qw, rope_rows)
                choice = choose_tensor_type(qw, ttype, allow_fallback, name=gguf_name)
                raw = encode_tensor(qw, choice.qtype, name=gguf_name)
                writer.add_tensor(gguf_name, raw, raw_dtype=choice.qtype)
                expected[gguf_name] = qw.dequantize(torch.float32).numpy()
                if isinstance(qw.grid, GGUFBlockGrid):
                    exact.add(gguf_name)
                report.tensor_types[gguf_name] = choice.qtype.name
                linear_types.append(choice.qtype)
                if choice.fallback:
                    report.fallback_reasons[gguf_name] = choice.reason
                report.linear_bits += raw.size * 8
                report.linear_params += qw.codes.numel()
                report.total_bits += raw.size * 8
                report.total_params += qw.codes.numel()
                continue
            if rope_rows is not None:  # a q/k linear left in float, or its bias
                param = param[rope_rows]
            is_table = hf_name.startswith(("model.embed_tokens", "lm_head"))
            qtype = EMBEDDING_TYPES[embedding_type] if is_table else (
                GGMLQuantizationType.F32 if param.dim() == 1 else GGMLQuantizationType.F16)
            if spec.norm_offset and hf_name.endswith("norm.weight"):
                param = param.float() + spec.norm_offset
            array = _float_tensor(param, qtype)
            writer.add_tensor(gguf_name, array, raw_dtype=qtype if qtype == GGMLQuantizationType.Q8_0 else None)
            report.tensor_types[gguf_name] = qtype.name
            report.total_bits += array.nbytes * 8
            report.total_params += param.numel()
            if not is_table and param.dim() == 2:  # a decoder linear left in float
                report.linear_bits += array.nbytes * 8
                report.linear_params += param.numel()
        writer.add_file_type(file_type_of(linear_types, ttype))
        # Last keys: the marker and the placeholder that seal_gguf fills with the file's sha256.
        writer.add_string(MARKER_KEY, MARKER_VALUE)
        writer.add_string(CHECKSUM_KEY, CHECKSUM_PLACEHOLDER)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        seal_gguf(tmp)
        if validate:
            report.max_abs_error = validate_gguf(tmp, expected, exact)
            if vocab is not None:
                report.tokenization_checked = check_llama_cpp_tokenization(tmp, tokenizer)
        os.replace(tmp, path)
    finally:
        writer.close()  # a failure midway leaves the temporary open: close it before removing it
        if tmp.exists():
            tmp.unlink()
    report.file_bytes = path.stat().st_size
    return report


def _rope_rows(spec: GGUFArch, config, module_name: str, out_features: int) -> torch.Tensor | None:
    """The row order llama.cpp needs for a q/k projection's weight or bias in the llama graph, else None."""
    if not spec.permute_rope or not module_name.endswith(("q_proj", "k_proj")):
        return None
    heads = config.num_attention_heads if module_name.endswith("q_proj") else config.num_key_value_heads
    return rope_row_permutation(out_features, heads)


def validate_gguf(path: str | os.PathLike, expected: dict[str, np.ndarray], exact: set[str] = frozenset()) -> float:
    """Read the file back and check each quantized tensor against ``expected`` to fp16 rounding,
    the ``exact`` ones (on a GGUF grid) bit for bit.

    Returns the largest absolute difference seen."""
    check_gguf(path)
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    worst = 0.0
    for name, want in expected.items():
        if name not in tensors:
            raise GGUFExportError(f"{path}: tensor {name} is missing after writing")
        tensor = tensors[name]
        got = decode_tensor(np.asarray(tensor.data), tensor.tensor_type).reshape(want.shape)
        tolerance = 0.0 if name in exact else 2e-3 * np.abs(want).max() + 1e-7
        error = float(np.abs(got - want).max())
        if error > tolerance:
            raise GGUFExportError(
                f"{path}: tensor {name} ({tensor.tensor_type.name}) reads back with error {error:.3g} "
                f"> {tolerance:.3g}; the file is not written"
            )
        worst = max(worst, error)
    return worst


@contextlib.contextmanager
def llama_cpp_without_repacking():
    """Within it, new ``llama_cpp.Llama`` objects load without llama.cpp's repacked ("extra buffer") CPU
    kernels; yields the ``llama_cpp`` module.

    Those kernels for Q4_0/Q4_1 crash on some AVX-512/AMX machines, the unmodified SmolLM2 Q4_1 GGUF
    included; the plain kernels compute the same values.
    """
    try:
        import llama_cpp
        import llama_cpp.llama as llama_module
    except ImportError as err:
        raise GGUFExportError("checking a GGUF file with llama.cpp needs `pip install llama-cpp-python`") from err
    default_params = llama_cpp.llama_model_default_params

    def without_repacking():
        params = default_params()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = without_repacking
    try:
        yield llama_cpp
    finally:
        llama_module.llama_cpp.llama_model_default_params = default_params


def open_llama_cpp(path: str | os.PathLike, n_ctx: int, n_threads: int = 2, logits_all: bool = True):
    """A ``llama_cpp.Llama`` on ``path`` with room for ``n_ctx`` tokens in one batch, on the plain kernels
    (:func:`llama_cpp_without_repacking`)."""
    with llama_cpp_without_repacking() as llama_cpp:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=logits_all, verbose=False,
                               n_threads=n_threads, n_threads_batch=n_threads)


def llama_cpp_logits(path: str | os.PathLike, token_ids: list[int], n_threads: int = 2) -> np.ndarray:
    """Logits llama.cpp (through llama-cpp-python) computes for ``token_ids``: ``[len, vocab]``."""
    llm = open_llama_cpp(path, len(token_ids), n_threads)
    try:
        llm.eval(list(token_ids))
        return np.array(llm.scores[: len(token_ids)])
    finally:
        llm.close()


def llama_cpp_chunk_nll(path: str | os.PathLike, chunks: torch.Tensor, n_threads: int = 2) -> list[float]:
    """llama.cpp's mean next-token NLL of each row of ``chunks`` ``[n, seqlen]``, each row a fresh context:
    the loss :func:`tritium.eval.perplexity.chunk_nll` computes, so that exp(mean) is comparable with
    tritium's perplexity on the same rows."""
    llm = open_llama_cpp(path, chunks.shape[1], n_threads)
    nlls = []
    try:
        for row in chunks:
            llm.reset()
            llm.eval(row.tolist())
            logits = torch.from_numpy(np.array(llm.scores[: row.numel()], dtype=np.float64))
            logprobs = torch.log_softmax(logits[:-1], -1)
            nlls.append(-logprobs.gather(1, row[1:, None].long()).mean().item())
    finally:
        llm.close()
    return nlls
