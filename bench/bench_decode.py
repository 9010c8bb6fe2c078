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
                        tokenizer_gguf=tokenizer_gguf)
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


def child(kind: str, folder: Path, threads: int, new_tokens: int, profile_steps: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tritium  # noqa: F401  (registers the tritium quantizer)
    from tritium.runtime import FastDecoder

    path = folder / ("packed" if kind == "packed" else "fp16")
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
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating float/packed runs, median taken")
    parser.add_argument("--profile-steps", type=int, default=16)
    parser.add_argument("--work-dir", help="where the three model folders go (default: a temporary folder)")
    parser.add_argument("--out", default="bench/results/decode.json")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, folder = args.child
        print(json.dumps(child(kind, Path(folder), args.threads, args.new_tokens,
                               args.profile_steps if kind == "packed" else 0)))
        return 0
    folder = Path(args.work_dir or tempfile.mkdtemp(prefix="tritium-decode-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"preparing folders in {folder}", file=sys.stderr)
    sizes = prepare(args.model, folder)
    runs: dict[str, list[dict]] = {"float": [], "packed": []}
    for repeat in range(args.repeats):
        for kind in ("float", "packed"):
            command = [sys.executable, __file__, "--child", kind, str(folder), "--threads", str(args.threads),
                       "--new-tokens", str(args.new_tokens),
                       "--profile-steps", str(args.profile_steps if repeat == 0 else 0)]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO / "src")})
            if done.returncode:
                raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
            runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(kind, {k: v for k, v in runs[kind][-1].items() if k != "profile"}, file=sys.stderr, flush=True)
    loops = ("hf_generate_tokens_per_s", "lean_tokens_per_s", "lean_fp16_head_tokens_per_s")
    median = {loop: {kind: statistics.median(r[loop] for r in rs) for kind, rs in runs.items()} for loop in loops}
    from tritium.utils.hardware import cpu_name

    summary = {
        "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs", "threads": args.threads,
        "load_average_at_end": os.getloadavg()[0], "model": args.model, "new_tokens": args.new_tokens,
        "sizes": sizes, "runs": runs, "decode_tokens_per_s": median,
        "speedup": {loop: m["packed"] / m["float"] for loop, m in median.items()},
        "peak_rss_mb": {kind: statistics.median(r["peak_rss_mb"] for r in rs) for kind, rs in runs.items()},
        "packed_profile": runs["packed"][0].get("profile"),
    }
    from tritium.utils.io import atomic_write_json

    atomic_write_json(args.out, summary)
    print(json.dumps({k: summary[k] for k in ("decode_tokens_per_s", "speedup", "peak_rss_mb", "packed_profile")},
                     indent=1))
    print(json.dumps(sizes, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
