"""End-to-end greedy decode on the CPU: the packed ternary model against the fp32 model.

Prepares three folders from one model (default: the embedded SmolLM2-135M): the float
model as fp16 safetensors, the tritium packed folder (RTN ternary absmean per channel,
codes base-3) and a GGUF file (TQ1_0 where rows split into 256-blocks, the exact
fallback elsewhere), and reports their sizes. Then each model decodes in its own
process, alternating float and packed runs, batch 1, through HF ``generate`` with the
KV cache:

* decode tokens/s, two ways: HF ``generate`` (N / (time of prompt + N + 1 tokens − time of
  prompt + 1 token)), and tritium's lean loop (:mod:`tritium.runtime`, same modules, fewer
  torch calls per block), with the fp32 LM head, and with the head read as fp16 (both models; exact here, as
  both folders store it in fp16; arithmetic stays fp32);
* peak RSS of the process (load + decode);
* for the packed model, a profile of the decode steps: the share of the packed linears,
  the float LM head, the other torch ops, and the Python overhead around them.

Quality is not the point here (RTN ternary SmolLM2 has collapsed); speed does not
depend on the weights' values.

Beside them, in the same rotation, llama.cpp (llama-cpp-python) decodes the same model from its
shipped Q4_1 GGUF (the file ``tritium.models.load_model`` reads; ``--llama-gguf`` picks another, or
``none``), greedy, one token per ``eval``, with as many threads. ``--paths avx2,avx512`` runs the packed
model once per CPU kernel path (``TRITIUM_CPU_PATH`` in its process). The output records the CPU's
SIMD flags and, per run, the kernel path that ran.

Issue 19's int8-activation path and its llama.cpp peer:

* ``--activations a16,a8`` decodes the packed model with float activations (W1.58A16,
  ``tritium::packed_linear``) and/or with 8-bit per-token activations (W1.58A8, ``tritium::packed_linear_a8``):
  the same ternary codes, saved a second time with the activation record a quantize job with ``act_bits: 8``
  writes (kind ``packed-a8``). Both run in tritium's lean loop (where the A8 model's q/k/v and gate/up are one
  int8 call each) and in HF ``generate``; ``a8_vs_a16`` gives the ratio in each loop. Each packed run
  records which linear ops ran (counted by the profiler over one forward) and the int8 kernel's name.
* ``--pad 256`` zero-pads the model's widths to multiples of 256 first (``bench/pad_model.py``; the logits
  stay the same), so that every linear splits into llama.cpp's super-blocks; the float, packed and
  ``--llama-ternary`` models are then the padded one (the ``--llama-gguf`` file is read as it is: by default the
  shipped, unpadded Q4_1, a reference for what the padding costs).
* ``--llama-ternary tq2_0,tq1_0`` writes the ternary codes as GGUF with every linear on that type (no fallback)
  and decodes each file with llama.cpp, whose TQ2_0/TQ1_0 kernels take 8-bit activations (bitnet.cpp's I2_S
  is the same idea).

    python bench/bench_decode.py --threads 2 --new-tokens 64 --repeats 3 --out bench/results/decode.json
    python bench/bench_decode.py --threads 2 --new-tokens 64 --repeats 3 --pad 256 --activations a16,a8 \
        --llama-ternary tq2_0,tq1_0 --out bench/results/decode-a8-tq2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
if str(REPO / "bench") not in sys.path:  # pad_model.py beside this script, also when a test loads it by path
    sys.path.insert(0, str(REPO / "bench"))

PROMPT = "The history of the city begins"
ACTIVATIONS = {"a16": "packed", "a8": "packed-a8"}  # --activations value -> the packed folder (and run kind)
LINEAR_OPS = ("tritium::packed_linear", "tritium::packed_linear_a8")


class BenchInputError(ValueError):
    """A flag or the model cannot work with this bench; the message names the fix."""


def parse_activations(text: str) -> list[str]:
    chosen = [a.strip() for a in text.split(",") if a.strip()]
    wrong = [a for a in chosen if a not in ACTIVATIONS]
    if not chosen or wrong:
        raise BenchInputError(f"--activations takes a16 and/or a8, comma-separated; got {text!r}")
    return list(dict.fromkeys(chosen))


def parse_ternary_types(text: str) -> list[str]:
    from tritium.export.gguf_tensors import TERNARY_TYPES

    chosen = [t.strip().lower() for t in text.split(",") if t.strip()]
    wrong = [t for t in chosen if t not in TERNARY_TYPES]
    if wrong:
        raise BenchInputError(f"--llama-ternary takes {', '.join(TERNARY_TYPES)}, comma-separated; got {text!r}")
    return list(dict.fromkeys(chosen))


def padded(model, tokenizer, multiple: int) -> tuple:
    """``model`` zero-padded to widths that are multiples of ``multiple`` and what changed (the logits must not)."""
    import torch
    from pad_model import PaddingError, pad_model, padding_report

    try:
        wide = pad_model(model, multiple).eval()
    except PaddingError as err:
        raise BenchInputError(f"--pad {multiple}: {err}") from None
    report = padding_report(model, wide, torch.tensor([tokenizer(PROMPT)["input_ids"]]))
    difference = report.pop("max_logit_difference")
    return wide, {"multiple": multiple, **report, "max_logit_difference_on_prompt": difference}


def prepare(model_name: str, folder: Path, pad: int | None = None, activations=("a16",),
            llama_ternary=()) -> dict:
    import torch

    from tritium.export.gguf import GGUFExportError, write_gguf
    from tritium.export.gguf_tensors import GGUFTypeError
    from tritium.export.hf import save_packed
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import load_model
    from tritium.nn import pack_model, packed_bits_report
    from tritium.nn.activation_quant import install_activation_quantizers
    from tritium.quant import TernaryGrid
    from tritium.quant.grids import grid_to_dict
    from tritium.recipes import activation_grid_of
    from tritium.utils.io import folder_bytes

    model, tokenizer, source = load_model(model_name)
    padding = None
    if pad:
        model, padding = padded(model, tokenizer, pad)
    if llama_ternary:  # before any folder is written; write_gguf below refuses such a model too, but later
        from tritium.export.gguf_tensors import TQ_BLOCK

        widths = {"hidden": model.config.hidden_size, "intermediate": model.config.intermediate_size}
        ragged = {name: width for name, width in widths.items() if width % TQ_BLOCK}
        if ragged:
            raise BenchInputError(f"--llama-ternary {','.join(llama_ternary)}: the linears' input widths {ragged} do "
                                  f"not split into {TQ_BLOCK}-weight blocks (--pad 256 makes every width split into "
                                  "256-weight super-blocks)")
    fp16 = folder / "fp16"
    model.to(torch.float16).save_pretrained(fp16, safe_serialization=True)
    tokenizer.save_pretrained(fp16)
    model.to(torch.float32)
    grid = TernaryGrid("absmean", group="channel")
    # The recipe keys of W1.58A8 (act_bits: 8, per token, symmetric): RTN's codes do not depend on them, so the
    # A16 and A8 folders hold the same codes and differ only in the activation record.
    act_grid = activation_grid_of({"act_bits": 8}) if "a8" in activations else None
    result = quantize_(model, RTNConfig(grid=grid, act_grid=act_grid))
    # The padded model's vocabulary is the original one, so the shipped GGUF's still fits.
    tokenizer_gguf = Path(source.location) / source.gguf_file if source.gguf_file else None
    ternary_ggufs, strict_reports = {}, {}
    for ttype in llama_ternary:  # for llama.cpp's own ternary kernels: every linear on the type, or no file
        path = folder / f"model-{ttype}.gguf"
        try:
            written = write_gguf(model, path, result.weights, ttype, allow_fallback=False, embedding_type="f16",
                                 tokenizer=tokenizer, tokenizer_gguf=tokenizer_gguf, overwrite=True)
        except (GGUFExportError, GGUFTypeError) as err:  # a tensor the type cannot hold exactly
            raise BenchInputError(f"--llama-ternary {ttype}: {err} (--pad 256 makes every width split into "
                                  "256-weight super-blocks)") from None
        strict_reports[ttype] = (path, written)
        ternary_ggufs[ttype] = {"path": str(path), "bytes": path.stat().st_size,
                                "tensor_types": written.type_counts(),
                                "linear_bits_per_weight": written.linear_bits_per_weight}
    # The size figure's GGUF: TQ1_0 where rows split into 256-blocks, else its fallback. A strict TQ1_0 file has
    # every linear on TQ1_0 already, and is the same file: it is not written twice.
    if "tq1_0" in strict_reports:
        gguf_path, report = strict_reports["tq1_0"]
    else:
        gguf_path = folder / "model.gguf"
        report = write_gguf(model, gguf_path, result.weights, "tq1_0", embedding_type="f16", tokenizer=tokenizer,
                            tokenizer_gguf=tokenizer_gguf, overwrite=True)  # the bench remakes its own files
    pack_model(model, result.weights)
    packed = folder / "packed"
    save_packed(model, tokenizer, packed, "rtn", grid_to_dict(grid), float_dtype="float16")
    sizes = {}
    if act_grid is not None:
        # As a quantize job saves a W·A model (tritium.jobs.steps.save_model_folder): the packed modules replaced
        # the linears that held the quantizers, so they go on again, and the folder records them for the load.
        install_activation_quantizers(model, result.act_grids)
        a8 = folder / ACTIVATIONS["a8"]
        save_packed(model, tokenizer, a8, "rtn", grid_to_dict(grid), float_dtype="float16",
                    activations=result.activations_record())
        sizes["packed_a8_folder_bytes"] = folder_bytes(a8)
        sizes["packed_a8_activations"] = result.activations_record()["grid"]
    bits = {k: v for k, v in packed_bits_report(model).items() if k != "layers"}  # totals; per layer is noise here
    sizes = {"fp16_folder_bytes": folder_bytes(fp16), "packed_folder_bytes": folder_bytes(packed),
             "gguf_bytes": gguf_path.stat().st_size, "gguf_tensor_types": report.type_counts(),
             "gguf_linear_bits_per_weight": report.linear_bits_per_weight, "packed_bits": bits, **sizes}
    if ternary_ggufs:
        sizes["llama_ternary_ggufs"] = ternary_ggufs
    if padding:
        sizes["padding"] = padding
    return sizes


def linear_op_calls(model, ids) -> dict[str, int]:
    """How often each packed-linear op ran in one forward of ``ids``: which path (float or int8 activations)
    the model's linears really take, whatever their config says."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(ids)
    counts = {op: 0 for op in LINEAR_OPS}
    for event in prof.key_averages():
        if event.key in counts:
            counts[event.key] += event.count
    return counts


def profile_decode(decoder, ids, steps: int) -> dict:
    """Shares of the lean loop's decode-step time: packed linears, float matmuls (the LM head),
    other torch ops, and the Python around them."""
    from torch.profiler import ProfilerActivity, profile

    decoder.generate(ids, 2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = decoder.generate(ids, steps + 1)
    wall = result.decode_seconds
    totals = {"packed linears": 0.0, "float matmul (LM head)": 0.0, "other torch ops": 0.0}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key in LINEAR_OPS:
            totals["packed linears"] += seconds
        elif event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            totals["float matmul (LM head)"] += seconds
        else:
            totals["other torch ops"] += seconds
    # The profile covers the prefill too; scale the op totals to the decode steps' share of the time.
    total_ops = sum(totals.values())
    covered = wall + result.prefill_seconds
    totals = {k: v * wall / covered for k, v in totals.items()}
    totals["Python and framework overhead"] = max(wall - sum(totals.values()), 0.0)
    return {"steps": steps, "profiled_ms_per_token": wall / steps * 1e3, "ops_seconds": total_ops,
            "shares": {k: v / wall for k, v in totals.items()}}


def peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak across exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def llama_cpp_child(gguf: Path, threads: int, new_tokens: int) -> dict:
    """Greedy decode with llama.cpp: prompt in one ``eval``, then one token per ``eval`` (its decode step)."""
    import llama_cpp

    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=256 + new_tokens,
                          verbose=False)
    load_seconds = time.perf_counter() - start
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)

    def decode(n: int) -> tuple[float, float]:
        llm.reset()
        begin = time.perf_counter()
        llm.eval(prompt)
        token = llm.sample(top_k=1, temp=0.0)
        prefill = time.perf_counter() - begin
        begin = time.perf_counter()
        for _ in range(n):
            llm.eval([token])
            token = llm.sample(top_k=1, temp=0.0)
        return prefill, time.perf_counter() - begin

    decode(4)  # warm-up
    prefill, seconds = decode(new_tokens)
    result = {"kind": "llama.cpp", "gguf": str(gguf), "load_seconds": load_seconds, "prefill_s": prefill,
              "decode_tokens_per_s": new_tokens / seconds, "peak_rss_mb": peak_rss_mb(),
              "llama_cpp_version": llama_cpp.__version__,
              "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip()}
    llm.close()
    return result


def child(kind: str, folder: Path, threads: int, new_tokens: int, profile_steps: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tritium  # noqa: F401  (registers the tritium quantizer)
    from tritium.kernels import a8_kernel, active_path
    from tritium.runtime import FastDecoder, fast_decode_unsupported_reason

    packed = kind.startswith("packed")
    path = folder / (kind.split(":", 1)[0] if packed else "fp16")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load_seconds = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    def generate(n: int) -> float:
        begin = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - begin

    generate(4)  # warm-up: kernel scratch buffers, CPU layouts of the packed codes
    first = statistics.median(generate(1) for _ in range(3))
    full = generate(new_tokens + 1)
    result = {"kind": kind, "load_seconds": load_seconds, "hf_prefill_plus_one_s": first,
              "hf_generate_tokens_per_s": new_tokens / (full - first)}
    # The lean loop refuses only what it cannot compute as the model's own forward does (and says why).
    lean_refused = fast_decode_unsupported_reason(model)
    if lean_refused:
        result |= {"lean_tokens_per_s": None, "lean_prefill_s": None, "lean_fp16_head_tokens_per_s": None,
                   "lean_loop_refused": lean_refused}
    else:
        decoder = FastDecoder(model, max_length=ids.shape[1] + new_tokens + 8)
        decoder.generate(ids, 4)
        lean = decoder.generate(ids, new_tokens + 1)
        result |= {"lean_tokens_per_s": lean.decode_tokens_per_second, "lean_prefill_s": lean.prefill_seconds}
        if profile_steps:
            result["profile"] = profile_decode(decoder, ids, profile_steps)
        halved = FastDecoder(model, max_length=ids.shape[1] + new_tokens + 8, head_dtype=torch.float16)
        halved.generate(ids, 4)
        result["lean_fp16_head_tokens_per_s"] = halved.generate(ids, new_tokens + 1).decode_tokens_per_second
    result["peak_rss_mb"] = peak_rss_mb()
    result["kernel_path"] = active_path()  # packed layers (and the fp16 head) ran on this CPU kernel path
    if packed:
        calls = linear_op_calls(model, ids)
        result["linear_op_calls"] = calls
        # float: tritium::packed_linear on float inputs (or on fake-quantized ones, where the int8 kernel cannot
        # run an A8 model: the portable path); int8: tritium::packed_linear_a8 on this integer kernel
        float_calls, int8_calls = calls["tritium::packed_linear"], calls["tritium::packed_linear_a8"]
        result["activation_kernel"] = "mixed" if float_calls and int8_calls else \
            f"int8 {a8_kernel()}" if int8_calls else "float"
    return result


def _default_gguf(model_name: str) -> Path | None:
    """The GGUF file a model source reads (the shipped Q4_1 for smollm2-135m), or None for an HF source."""
    from tritium.models.loader import resolve_model_source

    source = resolve_model_source(model_name)
    return Path(source.location) / source.gguf_file if source.gguf_file else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating float/packed/llama.cpp runs, median taken")
    parser.add_argument("--profile-steps", type=int, default=16)
    parser.add_argument("--paths", default="",
                        help="CPU kernel paths for the packed model, comma-separated (default: the one tritium picks)")
    parser.add_argument("--activations", default="a16",
                        help="the packed model's activations, comma-separated: a16 (float, tritium::packed_linear) "
                             "and/or a8 (8-bit per token, tritium::packed_linear_a8)")
    parser.add_argument("--pad", type=int, default=None, metavar="MULTIPLE",
                        help="zero-pad the model's widths to multiples of MULTIPLE (256: llama.cpp's super-blocks) "
                             "before anything else; the float, packed and --llama-ternary models are the padded one, "
                             "the --llama-gguf file is read as it is")
    parser.add_argument("--llama-ternary", default="",
                        help="also decode with llama.cpp the ternary codes written as GGUF of these types "
                             "(tq2_0, tq1_0; every linear on the type: use --pad 256 on SmolLM2)")
    parser.add_argument("--llama-gguf", default=None,
                        help="GGUF file for the llama.cpp runs (default: the model's own GGUF; 'none' skips them)")
    parser.add_argument("--work-dir", help="where the model folders and GGUF files go (default: a temporary folder)")
    parser.add_argument("--out", default="bench/results/decode.json")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    if args.child:
        kind, folder = args.child
        if kind.startswith("llama.cpp"):
            print(json.dumps(llama_cpp_child(Path(folder), args.threads, args.new_tokens)))
        else:
            print(json.dumps(child(kind, Path(folder), args.threads, args.new_tokens,
                                   args.profile_steps if kind.startswith("packed") else 0)))
        return 0
    from tritium.kernels.cpu import PATH_FLAGS, paths_for_flags
    from tritium.utils.hardware import cpu_flags

    try:  # every flag is checked before the minutes of preparation, not in a child
        activations = parse_activations(args.activations)
        llama_ternary = parse_ternary_types(args.llama_ternary)
        if args.pad is not None and args.pad < 1:
            raise BenchInputError(f"--pad must be at least 1, got {args.pad}")
    except BenchInputError as err:
        raise SystemExit(str(err)) from None
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for path in paths:
        if path not in PATH_FLAGS or (cpu_flags() and path not in paths_for_flags(cpu_flags())):
            raise SystemExit(f"--paths: {path!r} is not a kernel path this CPU runs "
                             f"(choose from {', '.join(paths_for_flags(cpu_flags()) if cpu_flags() else PATH_FLAGS)})")
    gguf = None
    if args.llama_gguf != "none":
        gguf = Path(args.llama_gguf) if args.llama_gguf else _default_gguf(args.model)
        if gguf is None or not gguf.is_file():
            raise SystemExit(f"no GGUF for llama.cpp ({gguf or 'the model is not a GGUF source'}): pass --llama-gguf "
                             "FILE or --llama-gguf none")
    if gguf or llama_ternary:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise SystemExit("llama.cpp runs need llama-cpp-python (pip install llama-cpp-python), "
                             "or pass --llama-gguf none and no --llama-ternary")
    packed_kinds = [ACTIVATIONS[a] + (f":{p}" if p else "") for a in activations for p in (paths or [None])]
    llama_kinds = (["llama.cpp"] if gguf else []) + [f"llama.cpp:{t}" for t in llama_ternary]
    kinds = ["float"] + packed_kinds + llama_kinds
    folder = Path(args.work_dir or tempfile.mkdtemp(prefix="tritium-decode-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"preparing folders in {folder}", file=sys.stderr)
    try:
        sizes = prepare(args.model, folder, args.pad, activations, llama_ternary)
    except BenchInputError as err:
        raise SystemExit(str(err)) from None
    gguf_of = {"llama.cpp": gguf} | {f"llama.cpp:{t}": Path(sizes["llama_ternary_ggufs"][t]["path"])
                                     for t in llama_ternary}
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        for kind in kinds:
            env = os.environ | {"PYTHONPATH": str(REPO / "src")}
            if kind.startswith("packed") and ":" in kind:
                env["TRITIUM_CPU_PATH"] = kind.split(":", 1)[1]
            target = str(gguf_of[kind]) if kind in llama_kinds else str(folder)
            command = [sys.executable, __file__, "--child", kind, target, "--threads", str(args.threads),
                       "--new-tokens", str(args.new_tokens),
                       "--profile-steps", str(args.profile_steps if repeat == 0 else 0),
                       "--out", ""]  # a child prints its figures; claiming --out too would collide with this run
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode:
                raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
            runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(kind, {k: v for k, v in runs[kind][-1].items() if k != "profile"}, file=sys.stderr, flush=True)
    summary = summarize(args, runs, kinds, llama_kinds, gguf_of, sizes)
    from tritium.utils.io import atomic_write_json

    atomic_write_json(args.out, summary)
    print(json.dumps({k: summary[k] for k in ("cpu_simd_flags", "kernel_paths", "activation_kernels",
                                              "side_by_side_tokens_per_s", "decode_tokens_per_s", "speedup",
                                              "a8_vs_a16", "peak_rss_mb", "packed_profile")},
                     indent=1))
    print(json.dumps(sizes, indent=1, default=str))
    return 0


def _median(values) -> float | None:
    """The median, or None where a run has no figure (the lean loop refused the model)."""
    values = list(values)
    return None if not values or any(v is None for v in values) else statistics.median(values)


def summarize(args, runs: dict[str, list[dict]], kinds: list[str], llama_kinds: list[str], gguf_of: dict,
              sizes: dict) -> dict:
    from tritium.kernels.cpu import simd_flags
    from tritium.utils.hardware import cpu_name

    tritium_kinds = [k for k in kinds if k not in llama_kinds]
    loops = ("hf_generate_tokens_per_s", "lean_tokens_per_s", "lean_fp16_head_tokens_per_s")
    median = {loop: {kind: _median(r[loop] for r in runs[kind]) for kind in tritium_kinds} for loop in loops}
    # One line per engine, each as it is meant to run: tritium's lean loop (the packed model with its
    # fp16 head, as `tritium run` does; the fp32 model with its fp32 head), HF generate for a model the lean
    # loop refuses, and llama.cpp's own loop.
    side_by_side = {}
    for kind in tritium_kinds[1:]:
        lean = median["lean_fp16_head_tokens_per_s"][kind]
        if lean is not None:
            side_by_side[f"tritium {kind} (lean loop, fp16 head)"] = lean
        else:
            side_by_side[f"tritium {kind} (HF generate)"] = median["hf_generate_tokens_per_s"][kind]
    side_by_side["tritium fp32 (lean loop, fp32 head)"] = median["lean_tokens_per_s"]["float"]
    for kind in llama_kinds:
        side_by_side[f"llama.cpp {gguf_of[kind].name}"] = statistics.median(r["decode_tokens_per_s"]
                                                                            for r in runs[kind])
    first_packed = tritium_kinds[1]
    speedup = {loop: (m[first_packed] / m["float"] if m[first_packed] and m["float"] else None)
               for loop, m in median.items()}
    # Issue 19's measure: the int8-activation path against the float-activation one, same codes, same path,
    # in each loop that ran both.
    a8_vs_a16 = {}
    for kind in tritium_kinds:
        if kind.startswith(ACTIVATIONS["a8"]):
            a16 = ACTIVATIONS["a16"] + kind[len(ACTIVATIONS["a8"]):]
            for loop in loops:
                a8_speed, a16_speed = median[loop][kind], median[loop].get(a16)
                if a8_speed and a16_speed:
                    a8_vs_a16.setdefault(loop, {})[kind] = a8_speed / a16_speed
    packed_kinds = tritium_kinds[1:]
    return {
        "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs", "threads": args.threads,
        "cpu_simd_flags": " ".join(simd_flags()),
        "kernel_paths": {kind: sorted({r.get("kernel_path") for r in runs[kind]}) for kind in tritium_kinds},
        "activation_kernels": {kind: sorted({r["activation_kernel"] for r in runs[kind]}) for kind in packed_kinds},
        "load_average_at_end": os.getloadavg()[0], "model": args.model, "new_tokens": args.new_tokens,
        "padded_to": args.pad, "sizes": sizes, "runs": runs, "decode_tokens_per_s": median,
        "side_by_side_tokens_per_s": side_by_side, "speedup": speedup,
        "a8_vs_a16": a8_vs_a16 or None,
        "peak_rss_mb": {kind: statistics.median(r["peak_rss_mb"] for r in rs) for kind, rs in runs.items()},
        "packed_profile": next((runs[k][0]["profile"] for k in packed_kinds if runs[k][0].get("profile")), None),
        "llama_cpp_system_info": runs[llama_kinds[0]][0]["llama_cpp_system_info"] if llama_kinds else None,
    }


if __name__ == "__main__":
    sys.exit(main())
