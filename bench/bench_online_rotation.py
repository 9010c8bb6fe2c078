"""Online rotations (QuaRot R3/R4) and a fake-quantized KV cache on SmolLM2-135M, WikiText-2 test.

Every variant starts from the same float model and is scored on the same chunks (GPTQ protocol,
first ``--limit`` chunks of ``--seqlen`` tokens):

* ``r1r2-r4`` and ``r1r2-r3-r4``: the fused R1/R2 rotations plus the online Hadamards. Weights and
  activations stay float, so the perplexity must equal the float one (to ~1e-4 relative);
* ``kv8``, ``kv4``: 8- and 4-bit KV cache (asymmetric, per head and per token), no rotation;
* ``kv8-r3``, ``kv4-r3``: the same with R3 (queries and keys rotated after RoPE);
* ``kv4-r1r2-r3-r4``: the 4-bit cache with every rotation.

Results go to ``--out`` (JSON) as they are produced, a rerun skips what it holds, and a markdown
table is written beside it.

    nice -n 19 env OMP_NUM_THREADS=1 TRITIUM_DATA=/work/shared/data \\
        python bench/bench_online_rotation.py --threads 1 --out bench/results/online-rotation.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

from tritium.models.online_rotation import OnlineRotationSettings, add_online_rotations_
from tritium.models.rotation import RotationSettings, rotate_model_

# name -> (R1/R2 first?, online_rotation, kv_bits)
VARIANTS = {
    "r1r2-r4": (True, "down_proj", None),
    "r1r2-r3-r4": (True, "all", None),
    "kv8": (False, None, 8),
    "kv8-r3": (False, "qk", 8),
    "kv4": (False, None, 4),
    "kv4-r3": (False, "qk", 4),
    "kv4-r1r2-r3-r4": (True, "all", 4),
}
FLOAT_EQUAL_VARIANTS = ("r1r2-r4", "r1r2-r3-r4")


def prepare(float_model, name: str):
    """A copy of ``float_model`` with the variant's rotations and KV cache; returns it and its report."""
    fused, online, kv_bits = VARIANTS[name]
    model = copy.deepcopy(float_model)
    report = {}
    if fused:
        report["rotation"] = rotate_model_(model, RotationSettings(seed=0)).to_dict()
    report["online"] = add_online_rotations_(model, OnlineRotationSettings(online_rotation=online,
                                                                           kv_bits=kv_bits)).to_dict()
    return model, report


def run_variants(float_model, ids, seqlen: int, limit: int, results: dict, save=lambda results: None,
                 names=None) -> dict:
    """Score the float model and each variant in ``names`` not yet in ``results``, saving after each."""
    from tritium.eval import perplexity

    def score(model) -> dict:
        res = perplexity(model, ids, seqlen=seqlen, limit=limit, dataset="wikitext2", progress=False)
        return {"ppl": res.ppl, "chunks": res.n_chunks, "chunk_nll": res.chunk_nll, "seconds": res.seconds}

    if "float" not in results:
        results["float"] = score(float_model)
        save(results)
    base = results["float"]
    for name in names or VARIANTS:
        if name in results:
            continue
        model, report = prepare(float_model, name)
        row = score(model)
        del model
        row["ratio_to_float"] = row["ppl"] / base["ppl"]
        row["relative_ppl_difference"] = abs(row["ppl"] - base["ppl"]) / base["ppl"]
        row["max_chunk_nll_difference"] = max(abs(a - b) for a, b in zip(row["chunk_nll"], base["chunk_nll"]))
        row["report"] = report
        results[name] = row
        save(results)
        print(f"{name:16s} ppl {row['ppl']:9.4f}  ratio {row['ratio_to_float']:.5f}", flush=True)
    return results


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    base = results["float"]
    lines = [f"Command: `{meta.get('command', '')}`  ",
             f"Machine: {meta.get('machine', '')}, torch {meta.get('torch', '')}. Date: {meta.get('date', '')}.  ",
             f"WikiText-2 test, first {base['chunks']} chunks of {meta.get('seqlen', '')} tokens; weights and "
             "activations float, KV cache asymmetric per head and per token.", "",
             "| variant | ppl | ratio to float | relative difference |", "|---|---|---|---|",
             f"| float | {base['ppl']:.4f} | 1 | 0 |"]
    for name in VARIANTS:
        if name in results:
            r = results[name]
            lines.append(f"| {name} | {r['ppl']:.4f} | {r['ratio_to_float']:.5f} "
                         f"| {r['relative_ppl_difference']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--limit", type=int, default=16, help="chunks scored (the first N)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="bench/results/online-rotation.json")
    args = parser.parse_args(argv)
    from tritium.utils.runs import claim_output

    claim_output(args.out, Path(__file__).name, overwrite=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tritium.data import load_eval_text
    from tritium.eval import tokenize_eval_text
    from tritium.models import load_model
    from tritium.utils.hardware import cpu_name
    from tritium.utils.io import atomic_write_json, atomic_write_text

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["meta"] = {"command": "python bench/bench_online_rotation.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "seqlen": args.seqlen}
    model, tokenizer, _ = load_model(args.model)
    ids = tokenize_eval_text(tokenizer, load_eval_text("wikitext2"))
    run_variants(model, ids, args.seqlen, args.limit, results, save=lambda r: atomic_write_json(out, r))
    bad = [n for n in FLOAT_EQUAL_VARIANTS if results[n]["relative_ppl_difference"] > 1e-4]
    table = markdown(results)
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    if bad:
        raise SystemExit(f"{', '.join(bad)} differ from float by more than 1e-4 relative: a rotation is wrong")
    return results


if __name__ == "__main__":
    main()
