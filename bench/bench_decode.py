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

    python bench/bench_decode.py --threads 2 --new-tokens 64 --repeats 3 --out bench/results/decode.json
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

PROMPT = "The history of the city begins"


def prepare(model_name: str, folder: Path) -> dict:
    import torch

    from tritium.export.gguf import write_gguf
    from tritium.export.hf import save_packed
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import load_model
    from tritium.nn import pack_model, packed_bits_report
    from tritium.quant import TernaryGrid
    from tritium.quant.grids import grid_to_dict
    from tritium.utils.io import folder_bytes

    model, tokenizer, source = load_model(model_name)
    fp16 = folder / "fp16"
    model.to(torch.float16).save_pretrained(fp16, safe_serialization=True)
    tokenizer.save_pretrained(fp16)
    model.to(torch.float32)
    grid = TernaryGrid("absmean", group="channel")
    result = quantize_(model, RTNConfig(grid=grid))
    gguf_path = folder / "model.gguf"
    tokenizer_gguf = Path(source.location) / source.gguf_file if source.gguf_file else None
    report = write_gguf(model, gguf_path, result.weights, "tq1_0", embedding_type="f16", tokenizer=tokenizer,
                        tokenizer_gguf=tokenizer_gguf, overwrite=True)  # the bench remakes its own files
    pack_model(model, result.weights)
    packed = folder / "packed"
    save_packed(model, tokenizer, packed, "rtn", grid_to_dict(grid), float_dtype="float16")
    bits = {k: v for k, v in packed_bits_report(model).items() if k != "layers"}  # totals; per layer is noise here
    return {"fp16_folder_bytes": folder_bytes(fp16), "packed_folder_bytes": folder_bytes(packed),
            "gguf_bytes": gguf_path.stat().st_size, "gguf_tensor_types": report.type_counts(),
            "gguf_linear_bits_per_weight": report.linear_bits_per_weight, "packed_bits": bits}


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
        if event.key == "tritium::packed_linear":
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
    from tritium.runtime import FastDecoder

    path = folder / ("packed" if kind.startswith("packed") else "fp16")
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
    decoder = FastDecoder(model, max_length=ids.shape[1] + new_tokens + 8)
    decoder.generate(ids, 4)
    lean = decoder.generate(ids, new_tokens + 1)
    result = {"kind": kind, "load_seconds": load_seconds, "hf_prefill_plus_one_s": first,
              "hf_generate_tokens_per_s": new_tokens / (full - first),
              "lean_tokens_per_s": lean.decode_tokens_per_second, "lean_prefill_s": lean.prefill_seconds,
              "peak_rss_mb": peak_rss_mb()}
    if profile_steps:
        result["profile"] = profile_decode(decoder, ids, profile_steps)
    halved = FastDecoder(model, max_length=ids.shape[1] + new_tokens + 8, head_dtype=torch.float16)
    halved.generate(ids, 4)
    result["lean_fp16_head_tokens_per_s"] = halved.generate(ids, new_tokens + 1).decode_tokens_per_second
    from tritium.kernels import active_path

    result["kernel_path"] = active_path()  # packed layers (and the fp16 head) ran on this CPU kernel path
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
    parser.add_argument("--llama-gguf", default=None,
                        help="GGUF file for the llama.cpp runs (default: the model's own GGUF; 'none' skips them)")
    parser.add_argument("--work-dir", help="where the three model folders go (default: a temporary folder)")
    parser.add_argument("--out", default="bench/results/decode.json")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    if args.child:
        kind, folder = args.child
        if kind == "llama.cpp":
            print(json.dumps(llama_cpp_child(Path(folder), args.threads, args.new_tokens)))
        else:
            print(json.dumps(child(kind, Path(folder), args.threads, args.new_tokens,
                                   args.profile_steps if kind.startswith("packed") else 0)))
        return 0
    from tritium.kernels.cpu import PATH_FLAGS, paths_for_flags, simd_flags
    from tritium.utils.hardware import cpu_flags, cpu_name

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for path in paths:  # fail before the minutes of preparation, not in a child
        if path not in PATH_FLAGS or (cpu_flags() and path not in paths_for_flags(cpu_flags())):
            raise SystemExit(f"--paths: {path!r} is not a kernel path this CPU runs "
                             f"(choose from {', '.join(paths_for_flags(cpu_flags()) if cpu_flags() else PATH_FLAGS)})")
    gguf = None
    if args.llama_gguf != "none":
        gguf = Path(args.llama_gguf) if args.llama_gguf else _default_gguf(args.model)
        if gguf is None or not gguf.is_file():
            raise SystemExit(f"no GGUF for llama.cpp ({gguf or 'the model is not a GGUF source'}): pass --llama-gguf "
                             "FILE or --llama-gguf none")
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise SystemExit("llama.cpp runs need llama-cpp-python (pip install llama-cpp-python), "
                             "or pass --llama-gguf none")
    kinds = ["float"] + ([f"packed:{p}" for p in paths] or ["packed"]) + (["llama.cpp"] if gguf else [])
    folder = Path(args.work_dir or tempfile.mkdtemp(prefix="tritium-decode-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"preparing folders in {folder}", file=sys.stderr)
    sizes = prepare(args.model, folder)
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        for kind in kinds:
            env = os.environ | {"PYTHONPATH": str(REPO / "src")}
            if kind.startswith("packed:"):
                env["TRITIUM_CPU_PATH"] = kind.split(":", 1)[1]
            target = str(gguf) if kind == "llama.cpp" else str(folder)
            command = [sys.executable, __file__, "--child", kind, target, "--threads", str(args.threads),
                       "--new-tokens", str(args.new_tokens),
                       "--profile-steps", str(args.profile_steps if repeat == 0 else 0),
                       "--out", ""]  # a child prints its figures; claiming --out too would collide with this run
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode:
                raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
            runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(kind, {k: v for k, v in runs[kind][-1].items() if k != "profile"}, file=sys.stderr, flush=True)
    tritium_kinds = [k for k in kinds if k != "llama.cpp"]
    loops = ("hf_generate_tokens_per_s", "lean_tokens_per_s", "lean_fp16_head_tokens_per_s")
    median = {loop: {kind: statistics.median(r[loop] for r in runs[kind]) for kind in tritium_kinds} for loop in loops}
    first_packed = tritium_kinds[1]
    # One line per engine, each as it is meant to run: tritium's lean loop (the packed model with its
    # fp16 head, as `tritium run` does; the fp32 model with its fp32 head) and llama.cpp's own loop.
    side_by_side = {f"tritium {kind} (lean loop, fp16 head)": median["lean_fp16_head_tokens_per_s"][kind]
                    for kind in tritium_kinds[1:]}
    side_by_side["tritium fp32 (lean loop, fp32 head)"] = median["lean_tokens_per_s"]["float"]
    if gguf:
        side_by_side[f"llama.cpp {gguf.name}"] = statistics.median(r["decode_tokens_per_s"] for r in runs["llama.cpp"])
    summary = {
        "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs", "threads": args.threads,
        "cpu_simd_flags": " ".join(simd_flags()),
        "kernel_paths": {kind: sorted({r.get("kernel_path") for r in runs[kind]}) for kind in tritium_kinds},
        "load_average_at_end": os.getloadavg()[0], "model": args.model, "new_tokens": args.new_tokens,
        "sizes": sizes, "runs": runs, "decode_tokens_per_s": median, "side_by_side_tokens_per_s": side_by_side,
        "speedup": {loop: m[first_packed] / m["float"] for loop, m in median.items()},
        "peak_rss_mb": {kind: statistics.median(r["peak_rss_mb"] for r in rs) for kind, rs in runs.items()},
        "packed_profile": runs[first_packed][0].get("profile"),
        "llama_cpp_system_info": runs["llama.cpp"][0]["llama_cpp_system_info"] if gguf else None,
    }
    from tritium.utils.io import atomic_write_json

    atomic_write_json(args.out, summary)
    print(json.dumps({k: summary[k] for k in ("cpu_simd_flags", "kernel_paths", "side_by_side_tokens_per_s",
                                              "decode_tokens_per_s", "speedup", "peak_rss_mb", "packed_profile")},
                     indent=1))
    print(json.dumps(sizes, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
