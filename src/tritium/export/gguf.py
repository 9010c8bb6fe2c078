"""Write a quantized Llama, Mistral, Qwen2 or Gemma model as a GGUF file that llama.cpp runs.

Decoder linears quantized on a GGUF grid go to that grid's own type, bit for bit; ternary
ones go to TQ1_0/TQ2_0 where they fit, else to an exact fallback
(:mod:`tritium.export.gguf_tensors`); norms stay F32; embeddings and the output head
take the type the user chooses. Tensor names come from the ``gguf`` package's own
HF→GGUF name map. The file is validated after writing: every tensor is read back,
dequantized with gguf's reference code and compared with the model's weights. It is
sealed with its own sha256 (:mod:`tritium.utils.gguf_file`), so a damaged copy is refused
on load instead of giving different weights.
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


@dataclass(frozen=True)
class GGUFArch:
    """How one HF family maps onto a llama.cpp architecture."""

    name: str  # llama.cpp's architecture name (the metadata key prefix)
    arch: gguf.MODEL_ARCH
    # llama.cpp's "llama" rope rotates interleaved pairs, HF's rotate_half the two halves of each head: q/k
    # rows are reordered for it. Qwen2 and Gemma run llama.cpp's NEOX rope, which is HF's order.
    permute_rope: bool
    # Gemma's RMSNorm scales by (1 + w); llama.cpp reads the scale itself, so 1 is added on export.
    norm_offset: float = 0.0
    # llama.cpp's gemma graph always reuses the embedding as the output head.
    needs_tied_head: bool = False


ARCHITECTURES = {
    "llama": GGUFArch("llama", gguf.MODEL_ARCH.LLAMA, permute_rope=True),
    "mistral": GGUFArch("llama", gguf.MODEL_ARCH.LLAMA, permute_rope=True),
    "qwen2": GGUFArch("qwen2", gguf.MODEL_ARCH.QWEN2, permute_rope=False),
    "gemma": GGUFArch("gemma", gguf.MODEL_ARCH.GEMMA, permute_rope=False, norm_offset=1.0, needs_tied_head=True),
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


def _add_bpe_tokenizer(writer: GGUFWriter, tokenizer, n_vocab: int) -> None:
    """Byte-level BPE vocabularies (GPT-2 style) straight from an HF fast tokenizer."""
    import json

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise GGUFExportError(
            f"only byte-level BPE tokenizers can be written from an HF tokenizer (this one is "
            f"{spec['model']['type']}); pass tokenizer_gguf= a GGUF file holding the model's vocabulary"
        )
    vocab = spec["model"]["vocab"]
    for added in spec.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    tokens = [None] * (max(vocab.values()) + 1)
    for text, index in vocab.items():
        tokens[index] = text
    if any(t is None for t in tokens):
        raise GGUFExportError("the tokenizer's vocabulary has gaps in its ids; GGUF needs every id")
    if len(tokens) > n_vocab:
        raise GGUFExportError(f"the tokenizer has {len(tokens)} tokens but the embedding only {n_vocab} rows")
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    n_real = len(tokens)
    # llama.cpp sizes the vocabulary from the token list: pad it to the embedding's rows, as HF models pad.
    tokens += [f"[PAD{i}]" for i in range(n_real, n_vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.UNUSED if i >= n_real else
                            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges(merges)
    for setter, token_id in [(writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_eos_token_id, tokenizer.eos_token_id)]:
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(False)


def gguf_architecture(model) -> GGUFArch:
    """The llama.cpp architecture for ``model``, or a GGUFExportError naming the ones tritium writes."""
    config = model.config
    spec = ARCHITECTURES.get(config.model_type)
    if spec is None:
        raise GGUFExportError(
            f"GGUF export writes the {', '.join(ARCHITECTURES)} families (llama.cpp's llama, qwen2 and gemma "
            f"architectures); {config.model_type!r} is not one of them: export it with --format compressed-tensors "
            "or --format tritium instead")
    if spec.needs_tied_head and not _head_is_the_embedding(model):
        raise GGUFExportError(
            f"llama.cpp's {spec.name} architecture reuses the embedding as the output head, but this model has "
            "its own lm_head: such a file would compute different logits; export it with --format tritium")
    return spec


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


def _add_llama_metadata(writer: GGUFWriter, config, n_vocab: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
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


def write_gguf(model, path: str | os.PathLike, weights: dict[str, QuantizedWeight], ttype: str = "tq1_0",
               allow_fallback: bool = True, embedding_type: str = "f16", tokenizer=None,
               tokenizer_gguf: str | os.PathLike | None = None, validate: bool = True) -> GGUFReport:
    """Write ``model`` with its quantized linears ``weights`` (full name → QuantizedWeight) to ``path``."""
    if ttype not in TERNARY_TYPES:
        raise GGUFExportError(f"--type must be one of {', '.join(TERNARY_TYPES)}, not {ttype!r}")
    if embedding_type not in EMBEDDING_TYPES:
        raise GGUFExportError(f"embedding type must be one of {', '.join(EMBEDDING_TYPES)}, not {embedding_type!r}")
    config = model.config
    spec = gguf_architecture(model)
    if tokenizer is None and tokenizer_gguf is None:
        raise GGUFExportError("GGUF files carry the vocabulary: pass the tokenizer or a GGUF file to copy it from")
    layout = decoder_layout(model)
    name_map = gguf.get_tensor_name_map(spec.arch, layout.num_blocks)
    tied = layout.lm_head is None or layout.lm_head.weight is layout.embed_tokens.weight
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{temporary_prefix(path)}{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")  # cleaned if orphaned
    report = GGUFReport(str(path))
    expected: dict[str, np.ndarray] = {}
    exact: set[str] = set()  # tensors on a GGUF grid: they must read back bit for bit
    linear_types: list[GGMLQuantizationType] = []
    writer = GGUFWriter(tmp, spec.name)
    try:
        _add_llama_metadata(writer, config, layout.embed_tokens.weight.shape[0])
        if tokenizer_gguf is not None:
            _copy_tokenizer_fields(writer, tokenizer_gguf)
        else:
            _add_bpe_tokenizer(writer, tokenizer, layout.embed_tokens.weight.shape[0])
        for hf_name, param in model.state_dict().items():
            if hf_name.startswith("lm_head") and tied:
                continue
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GGUFExportError(f"no GGUF name for tensor {hf_name!r}")
            module_name, kind = hf_name.rsplit(".", 1)
            if module_name in weights and kind == "weight":  # a quantized linear's bias (Qwen2) stays float
                qw = weights[module_name]
                if spec.permute_rope and module_name.endswith(("q_proj", "k_proj")):
                    heads = config.num_attention_heads if module_name.endswith("q_proj") else config.num_key_value_heads
                    qw = _permute_rows(qw, rope_row_permutation(qw.codes.shape[0], heads))
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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    report.file_bytes = path.stat().st_size
    return report


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
