"""The pack, run and export jobs: from a quantize run to packed weights, generated text and the formats
runtimes load (compressed-tensors for vLLM, GGUF for llama.cpp). ``tritium pack``, ``tritium run`` and
``tritium export`` build a :class:`PackJob`, :class:`RunJob` or :class:`ExportJob` from their flags
(:mod:`tritium.cli.pack`) and call :func:`pack_folder`, :func:`run_model` or :func:`export_folder`;
Python code does the same::

    from tritium.jobs import ExportJob, PackJob, RunJob, export_folder, pack_folder, run_model
    packed = pack_folder(PackJob(run="runs/w2")).out
    run_model(RunJob(model=str(packed), prompt="The capital of France is")).text
    export_folder(ExportJob(model="runs/w2", format="gguf")).path
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..export.source import model_folder
from .preflight import PreflightError

if TYPE_CHECKING:
    from ..export.api import ExportReport


@dataclass(kw_only=True)
class PackJob:
    """A fake-quant run (or its model folder) to pack; the field names are the CLI's flags."""

    run: str
    format: str = "tritium"
    out: str | None = None  # default RUN/packed, or MODEL-packed beside a model folder
    overwrite: bool = False
    ternary_layout: str = "base3"
    scale_dtype: str = "float16"
    float_dtype: str = "float16"
    head_type: str = "f16"


@dataclass
class PackResult:
    folder: Path  # the fake-quant model folder that was packed
    out: Path  # the packed model folder
    grid: str  # the run's grid, described, with how many linears have grids of their own
    linears: int  # packed linears
    bits_per_weight: float  # of the packed linears: codes, scales and zero points or shifts
    code_bits_per_weight: float
    packed_weight_bytes: int
    fake_bytes: int  # the folders' sizes
    packed_bytes: int


def pack_folder(job: PackJob) -> PackResult:
    from ..utils.integrity import verified_folder

    folder, default_out = model_folder(job.run)
    with verified_folder(folder):  # config.json and the codes are read before the model loads
        return _pack(job, folder, default_out)


def _pack(job: PackJob, folder: Path, default_out: Path) -> PackResult:
    from ..export.codes import load_codes
    from ..export.hf import save_packed
    from ..models import load_model
    from ..nn import check_head_quantizable, pack_with_codes, packed_bits_report, quantize_head_
    from ..pack import PackError
    from ..utils.io import folder_bytes
    from ..utils.runs import claim_output
    from .preflight import preflight_pack

    plan = preflight_pack(job, folder, default_out)
    out, qconfig = plan.out, plan.tritium_config
    claim_output(out, "pack", job.overwrite)  # one writer at a time; an earlier pack is replaced only when told
    codes = load_codes(folder)
    if codes.grid != qconfig.get("grid") or codes.grid_overrides != (qconfig.get("grid_overrides") or {}):
        raise PreflightError(f"{folder}: the codes were made on grid {codes.grid} but config.json says "
                             f"{qconfig.get('grid')} (or their per-linear grids differ): the folder is inconsistent; "
                             "re-run `tritium quantize`")
    print(f"tritium: loading {folder}", file=sys.stderr)
    model, tokenizer, _ = load_model(folder, dtype="auto")
    check_head_quantizable(model, job.head_type)  # e.g. a width that blocks of 32 do not divide: before packing
    try:
        pack_with_codes(model, codes.weights, plan.grid, job.ternary_layout, job.scale_dtype,
                        grid_overrides=plan.grid_overrides)
    except PackError as err:
        if "not exactly representable" not in str(err):
            raise
        raise PackError(f"{err}. Packing never changes a weight, and this run's scales do not fit "
                        f"{job.scale_dtype} exactly: keep --scale-dtype float16 (the dtype tritium's methods round "
                        "scales to)") from err
    quantize_head_(model, job.head_type)
    save_packed(model, tokenizer, out, qconfig.get("method", "unknown"), qconfig["grid"],
                qconfig.get("modules_not_quantized") or (), qconfig.get("method_args") or {},
                ternary_layout=job.ternary_layout, scale_dtype=job.scale_dtype, float_dtype=job.float_dtype,
                grid_overrides=qconfig.get("grid_overrides"))
    report = packed_bits_report(model)
    overrides = plan.grid_overrides
    grid = plan.grid.describe() + (f" ({len(overrides)} on their own grids)" if overrides else "")
    return PackResult(folder, out, grid, len(report["layers"]), report["bits_per_weight"],
                      report["code_bits_per_weight"], report["bytes"], folder_bytes(folder), folder_bytes(out))


@dataclass(kw_only=True)
class RunJob:
    """A model to generate from and how; the field names are the CLI's flags."""

    model: str  # a model folder (packed, fake-quant or float), a .gguf file or a named model
    prompt: str
    max_new_tokens: int = 64
    device: str = "auto"  # auto: cuda where available, else cpu
    threads: int | None = None  # CPU threads (None: torch's)
    dtype: str = "auto"  # of the unpacked parts (auto: the folder's)
    chat: bool = False  # wrap the prompt in the tokenizer's chat template
    head_type: str | None = None  # store the embedding and head as q8_0 or q4_0 first (None: as the model has them)
    loop: str = "auto"  # fast (tritium's lean loop), hf (generate) or auto (the lean loop where it applies)


@dataclass
class RunResult:
    text: str  # the new tokens, decoded
    new_tokens: int
    prompt_tokens: int
    device: str
    loop: str  # "lean loop" or "HF generate"
    source: str  # where the model came from, described
    head_type: str  # the head it ran with
    prefill_seconds: float
    decode_tokens_per_second: float | None  # None when only one token was made (no decode step)
    kernel_path: str | None  # the CPU kernel path packed layers ran on (None off the CPU or on the reference)
    warning: str | None = None  # e.g. generation stopped at the model's context


def run_model(job: RunJob) -> RunResult:
    import torch

    from ..models import load_model
    from .preflight import preflight_run

    device = preflight_run(job)
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    dtype = "auto" if job.dtype == "auto" else getattr(torch, job.dtype)
    model, tokenizer, source = load_model(job.model, dtype=dtype, device=device)
    if job.head_type is not None:
        from ..nn import check_head_quantizable, quantize_head_

        check_head_quantizable(model, job.head_type)  # a head the type cannot hold fails before any decoding
        quantize_head_(model, job.head_type)
    if job.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise PreflightError(f"{job.model}: the tokenizer has no chat template; run without --chat")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": job.prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(job.prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise PreflightError("the prompt encodes to no tokens; give a non-empty --prompt")
    ids = ids.to(device)
    from ..runtime import FastDecoder, fast_decode_unsupported_reason, new_tokens_within_context

    # Past max_position_embeddings a model's output means nothing: both loops stop at that limit, with a warning.
    max_new_tokens, warning = new_tokens_within_context(model, ids.shape[1], job.max_new_tokens, "--max-new-tokens")
    if warning:
        print(f"tritium: warning: {warning}", file=sys.stderr)

    reason = fast_decode_unsupported_reason(model)
    if job.loop == "fast" and reason:
        raise PreflightError(f"--loop fast does not support {reason}; use --loop hf")
    if job.loop == "fast" or (job.loop == "auto" and reason is None):
        # The lean loop: same modules and tokens as generate, far fewer torch calls per token.
        decoder = FastDecoder(model, max_length=ids.shape[1] + max_new_tokens, head_dtype="auto")
        result = decoder.generate(ids, max_new_tokens, eos_token_id=model.generation_config.eos_token_id)
        new = result.tokens[0, ids.shape[1]:]
        prefill = result.prefill_seconds
        rate = result.decode_tokens_per_second if result.decode_seconds > 0 else None
        loop = "lean loop"
    else:
        clock = _token_clock()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=pad, streamer=clock)
        new = out[0, ids.shape[1]:]
        prefill = clock.times[1] - start if len(clock.times) > 1 else float("nan")
        decode_steps = max(len(clock.times) - 2, 0)
        decode_seconds = clock.times[-1] - clock.times[1] if decode_steps else 0.0
        rate = decode_steps / decode_seconds if decode_seconds > 0 else None
        loop = "HF generate"
    from ..kernels.cpu import active_path
    from ..nn import head_type_of

    kernel = active_path() if str(device) == "cpu" and active_path() != "reference" else None
    return RunResult(tokenizer.decode(new, skip_special_tokens=True), int(new.numel()), int(ids.shape[1]), str(device),
                     loop, source.describe(), head_type_of(model), prefill, rate, kernel, warning)


def _token_clock():
    """A generate() streamer that notes when each step's tokens arrive: the first call brings the
    prompt, the second the first new token (end of prefill), the rest one decode step each.
    Made here, not at import: importing the jobs must not load transformers."""
    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    return TokenClock()


@dataclass(kw_only=True)
class ExportJob:
    """A run or model folder to write in a runtime's format; the field names are the CLI's flags. A ``None``
    option takes the format's default; ``gguf=OUT`` is ``format="gguf", out=OUT``."""

    model: str  # a `tritium quantize` run folder or a model folder it wrote (packed or fake)
    format: str | None = None  # compressed-tensors, gguf or tritium
    out: str | None = None  # default RUN/compressed-tensors, RUN/model.gguf or RUN/packed
    gguf: str | None = None
    overwrite: bool = False
    float_dtype: str | None = None
    scale_dtype: str | None = None
    type: str | None = None
    embedding_type: str | None = None
    no_fallback: bool = False


def export_folder(job: ExportJob) -> ExportReport:
    """Export the job's folder; the report holds what was written (its path, size, a summary in lines)."""
    from ..export.api import check_folder_config, export_model
    from ..utils.integrity import verified_folder
    from .preflight import export_request, preflight_export

    request = export_request(job)
    folder, _ = model_folder(job.model)
    check_folder_config(folder, request.format)  # a family the format cannot write: before any weight is read
    with verified_folder(folder):  # config.json and the codes are read before the model loads
        out = preflight_export(job, request)
        return export_model(job.model, format=request.format, out=out, overwrite=job.overwrite,
                            log=lambda line: print(line, file=sys.stderr), **request.options)
