"""``tritium pack``, ``tritium run`` and ``tritium export``: from a quantize run to packed weights,
generated text and the formats runtimes load (compressed-tensors for vLLM, GGUF for llama.cpp)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers.generation.streamers import BaseStreamer

from ..export.source import model_folder as _model_folder
from .preflight import PreflightError
from ..export.source import tritium_quantization_config as _quantization_config


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def cmd_pack(args) -> int:
    from ..utils.integrity import verified_folder

    folder, default_out = _model_folder(args.run)
    with verified_folder(folder):  # config.json and the codes are read before the model loads
        return _pack(args, folder, default_out)


def _pack(args, folder: Path, default_out: Path) -> int:
    from ..export.codes import load_codes
    from ..export.hf import grids_from_dicts, save_packed
    from ..models import load_model
    from ..models.loader import read_quantization_config
    from ..nn import check_head_quantizable, pack_with_codes, packed_bits_report, quantize_head_
    from ..pack import PackError
    from ..quant.grids import grid_from_dict
    from ..utils.io import folder_bytes
    from ..utils.runs import claim_output

    out = Path(args.out) if args.out else default_out
    qconfig = _quantization_config(folder, "pack")
    if qconfig.get("format") == "packed":
        raise PreflightError(f"{folder} is already packed (format 'packed'): run it with `tritium run {folder}` or "
                         f"export it with `tritium export {folder} --gguf OUT.gguf`")
    if out.resolve() == folder.resolve():
        raise PreflightError(f"--out {out} is the folder being packed; choose another folder")
    if out.exists() and any(out.iterdir()):
        existing = read_quantization_config(out) or {}
        if existing.get("format") != "packed":  # only an earlier `tritium pack` may be replaced (--overwrite)
            raise PreflightError(f"{out} exists and is not a packed tritium folder; choose another --out or remove it")
    claim_output(out, "pack", args.overwrite)  # one writer at a time; an earlier pack is replaced only when told
    codes = load_codes(folder)
    if codes.grid != qconfig.get("grid") or codes.grid_overrides != (qconfig.get("grid_overrides") or {}):
        raise PreflightError(f"{folder}: the codes were made on grid {codes.grid} but config.json says "
                         f"{qconfig.get('grid')} (or their per-linear grids differ): the folder is inconsistent; "
                         "re-run `tritium quantize`")
    grid, overrides = grid_from_dict(qconfig["grid"]), grids_from_dicts(qconfig.get("grid_overrides"))
    print(f"tritium: loading {folder}", file=sys.stderr)
    model, tokenizer, _ = load_model(folder, dtype="auto")
    check_head_quantizable(model, args.head_type)  # e.g. a width that blocks of 32 do not divide: before packing
    try:
        pack_with_codes(model, codes.weights, grid, args.ternary_layout, args.scale_dtype, grid_overrides=overrides)
    except PackError as err:
        if "not exactly representable" not in str(err):
            raise
        raise PackError(f"{err}. Packing never changes a weight, and this run's scales do not fit "
                        f"{args.scale_dtype} exactly: keep --scale-dtype float16 (the dtype tritium's methods round "
                        "scales to)") from err
    quantize_head_(model, args.head_type)
    save_packed(model, tokenizer, out, qconfig.get("method", "unknown"), qconfig["grid"],
                qconfig.get("modules_not_quantized") or (), qconfig.get("method_args") or {},
                ternary_layout=args.ternary_layout, scale_dtype=args.scale_dtype, float_dtype=args.float_dtype,
                grid_overrides=qconfig.get("grid_overrides"))
    report = packed_bits_report(model)
    fake_bytes, packed_bytes = folder_bytes(folder), folder_bytes(out)
    on = grid.describe() + (f" ({len(overrides)} on their own grids)" if overrides else "")
    print(f"packed {len(report['layers'])} linears on {on} ({args.ternary_layout}, {args.scale_dtype} "
          f"scales): {report['bits_per_weight']:.3f} bits/weight ({report['code_bits_per_weight']:.3f} for the codes), "
          f"{_megabytes(report['bytes'])} of packed weights")
    kept = ("norms stay float; embedding and head in " + args.head_type if args.head_type != "f16" else
            "embeddings, head and norms stay float")
    print(f"folder size: fake {_megabytes(fake_bytes)} -> packed {_megabytes(packed_bytes)} "
          f"({fake_bytes / max(packed_bytes, 1):.2f}x smaller; {kept})")
    print(f"model: {out}")
    return 0


class _TokenClock(BaseStreamer):
    """A generate() streamer that notes when each step's tokens arrive: the first call brings the
    prompt, the second the first new token (end of prefill), the rest one decode step each."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PreflightError("--device cuda: no CUDA device is available here; use --device cpu")
    return name


def cmd_run(args) -> int:
    import torch

    from ..models import load_model

    if args.max_new_tokens < 1:
        raise PreflightError("--max-new-tokens must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise PreflightError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    _refuse_run_folder(args.model)
    model, tokenizer, source = load_model(args.model, dtype=dtype, device=device)
    if args.head_type is not None:
        from ..nn import check_head_quantizable, quantize_head_

        check_head_quantizable(model, args.head_type)  # a head the type cannot hold fails before any decoding
        quantize_head_(model, args.head_type)
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise PreflightError(f"{args.model}: the tokenizer has no chat template; run without --chat")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise PreflightError("the prompt encodes to no tokens; give a non-empty --prompt")
    ids = ids.to(device)
    from ..runtime import FastDecoder, fast_decode_unsupported_reason, new_tokens_within_context

    # Past max_position_embeddings a model's output means nothing: both loops stop at that limit, with a warning.
    max_new_tokens, warning = new_tokens_within_context(model, ids.shape[1], args.max_new_tokens, "--max-new-tokens")
    if warning:
        print(f"tritium: warning: {warning}", file=sys.stderr)

    reason = fast_decode_unsupported_reason(model)
    if args.loop == "fast" and reason:
        raise PreflightError(f"--loop fast does not support {reason}; use --loop hf")
    if args.loop == "fast" or (args.loop == "auto" and reason is None):
        # The lean loop: same modules and tokens as generate, far fewer torch calls per token.
        decoder = FastDecoder(model, max_length=ids.shape[1] + max_new_tokens, head_dtype="auto")
        result = decoder.generate(ids, max_new_tokens, eos_token_id=model.generation_config.eos_token_id)
        new = result.tokens[0, ids.shape[1]:]
        prefill = result.prefill_seconds
        rate = f"{result.decode_tokens_per_second:.1f} tokens/s" if result.decode_seconds > 0 else "n/a (one token)"
        loop = "lean loop"
    else:
        clock = _TokenClock()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=pad, streamer=clock)
        new = out[0, ids.shape[1]:]
        prefill = clock.times[1] - start if len(clock.times) > 1 else float("nan")
        decode_steps = max(len(clock.times) - 2, 0)
        decode_seconds = clock.times[-1] - clock.times[1] if decode_steps else 0.0
        rate = f"{decode_steps / decode_seconds:.1f} tokens/s" if decode_seconds > 0 else "n/a (one token)"
        loop = "HF generate"
    print(tokenizer.decode(new, skip_special_tokens=True))
    n_new = int(new.numel())
    from ..kernels.cpu import active_path
    from ..nn import head_type_of

    kernel = f"; CPU kernel path {active_path()}" if str(device) == "cpu" and active_path() != "reference" else ""
    print(f"tritium: {n_new} new tokens on {device} with the {loop} ({source.describe()}, {head_type_of(model)} head); "
          f"prefill of {ids.shape[1]} tokens {prefill:.3f} s; decode {rate}{kernel}", file=sys.stderr)
    return 0


def _refuse_run_folder(model: str) -> None:
    """A `tritium quantize` run folder is not a model: name the model folders in it instead."""
    from ..models import ModelSourceError

    path = Path(model)
    if not path.is_dir() or (path / "config.json").is_file():
        return
    inside = [path / name for name in ("model", "packed") if (path / name / "config.json").is_file()]
    if inside:
        kinds = {"model": "the quantized model", "packed": "its packed form, on tritium's kernels"}
        options = " or ".join(f"`tritium run {p}` ({kinds[p.name]})" for p in inside)
        raise ModelSourceError(f"{path} is a run folder, not a model folder: run {options}")


def _export_request(args) -> tuple[str, str | None, dict]:
    """(format, out, the format's options) from the flags; --gguf OUT is --format gguf --out OUT."""
    from ..export.registry import ExportError

    fmt, out = args.format, args.out
    if args.gguf is not None:
        if fmt not in (None, "gguf") or (out is not None and out != args.gguf):
            raise ExportError(f"--gguf {args.gguf} means --format gguf --out {args.gguf}; drop --gguf or the other "
                              "--format/--out")
        fmt, out = "gguf", args.gguf
    if fmt is None:
        raise ExportError("choose a format: --format compressed-tensors (vLLM), --format gguf (llama.cpp) or "
                          "--format tritium (tritium's packed folder)")
    flags = {"float_dtype": ("--float-dtype", args.float_dtype), "scale_dtype": ("--scale-dtype", args.scale_dtype),
             "type": ("--type", args.type),
             "embedding_type": ("--embedding-type", args.embedding_type),
             "allow_fallback": ("--no-fallback", False if args.no_fallback else None)}
    options = {name: value for name, (_, value) in flags.items() if value is not None}
    from ..export.api import export_options

    taken = export_options(fmt)
    wrong = [flag for name, (flag, value) in flags.items() if value is not None and name not in taken]
    if wrong:
        raise ExportError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --format {fmt}")
    return fmt, out, options


def cmd_export(args) -> int:
    from ..utils.integrity import verified_folder
    from ..export.api import export_model

    fmt, out, options = _export_request(args)
    folder, _ = _model_folder(args.model)
    with verified_folder(folder):  # config.json and the codes are read before the model loads
        report = export_model(args.model, format=fmt, out=out, overwrite=args.overwrite,
                              log=lambda line: print(line, file=sys.stderr), **options)
    for line in report.lines:
        print(line)
    print(f"model: {report.path}")
    return 0
