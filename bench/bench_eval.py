"""Walking-skeleton benchmark: float vs RTN on SmolLM2-135M, WikiText-2 test, GPTQ protocol.

Measures, in one run:
  * perplexity of the float model and of RTN at W4g128, W3g128, W2g128 and ternary absmean
    per channel, over the first 16 chunks and over the full test split;
  * the float perplexity from an independent implementation of the protocol (written here
    from the GPTQ reference loop, sharing no tritium code) on the same chunks;
  * evaluation throughput of tritium's harness against a bare ``model(input_ids)`` loop,
    interleaved so that load from other processes hits both alike.

Results go to a JSON file as they are produced; a rerun skips what that file already holds.

    TRITIUM_DATA=../shared/data python bench/bench_eval.py --out bench/results/eval.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from tritium.data import load_eval_text, require_data_file
from tritium.eval import perplexity, size_report, tokenize_eval_text
from tritium.methods import RTNConfig, quantize_
from tritium.models import load_model
from tritium.quant import TernaryGrid, UniformGrid
from tritium.utils.hardware import cpu_name
from tritium.utils.io import atomic_write_json, atomic_write_text

SETTINGS = {
    "rtn-w4g128": UniformGrid(bits=4, group=128, ragged_groups=True),
    "rtn-w3g128": UniformGrid(bits=3, group=128, ragged_groups=True),
    "rtn-w2g128": UniformGrid(bits=2, group=128, ragged_groups=True),
    "rtn-ternary-absmean-perchannel": TernaryGrid(variant="absmean", group="channel"),
}


def independent_gptq_ppl(model, tokenizer, test_file: Path, seqlen: int, nsamples: int) -> float:
    """The GPTQ reference loop, rewritten without tritium: HF rows, "\\n\\n" join, sum of loss·seqlen."""
    rows = []
    with open(test_file, encoding="utf-8") as f:
        for line in f:
            rows.append(line if line.strip() else "")
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids
    nsamples = min(nsamples, ids.numel() // seqlen)
    loss_fct = torch.nn.CrossEntropyLoss()
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            batch = ids[:, i * seqlen : (i + 1) * seqlen]
            logits = model(batch).logits
            loss = loss_fct(logits[:, :-1, :].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (nsamples * seqlen)).item()


def throughput(model, ids: torch.Tensor, seqlen: int, chunks: int, repeats: int) -> dict:
    """tokens/s of tritium's perplexity() and of a bare forward loop, alternated ``repeats`` times."""
    harness, bare = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            perplexity(model, ids, seqlen=seqlen, limit=chunks, progress=False)
            harness.append(chunks * seqlen / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(chunks):
                model(ids[:, i * seqlen : (i + 1) * seqlen])
            bare.append(chunks * seqlen / (time.perf_counter() - start))
    h, b = statistics.median(harness), statistics.median(bare)
    return {"harness_tokens_per_s": h, "bare_tokens_per_s": b, "ratio": h / b, "harness_runs": harness,
            "bare_runs": bare}


def markdown(results: dict, head: int) -> str:
    meta = results["meta"]
    base = results["float"]
    lines = [f"Command: `TRITIUM_DATA=../shared/data {meta['command']}`  ",
             f"Machine: {meta['machine']}, torch {meta['torch']}. Date: {meta['date']}.", "",
             f"| model | bits/weight (linears) | size MB (Spectra count) | ppl, first {head} chunks | ratio to float "
             f"| ppl, full test ({base['chunks']} chunks) | ratio to float |", "|---|---|---|---|---|---|---|"]
    for name in ["float", *SETTINGS]:
        if name not in results:
            continue
        r = results[name]
        first, full = r[f"ppl_first_{head}"], r["ppl_full"]
        lines.append(f"| {name} | {r['size']['linear_bits_per_weight']:.3f} | {r['size']['total_megabytes']:.1f} "
                     f"| {first:.2f} | {first / base[f'ppl_first_{head}']:.2f}x | {full:.2f} "
                     f"| {full / base['ppl_full']:.2f}x |")
    if "independent" in results:
        ind = results["independent"]
        lines += ["", f"Independent GPTQ-protocol loop (first {ind['chunks']} chunks): {ind['ppl']:.4f}; tritium: "
                  f"{ind['tritium_ppl']:.4f}; relative difference {100 * ind['relative_difference']:.4f}%."]
    if "throughput" in results:
        t = results["throughput"]
        lines += [f"Throughput (median of interleaved runs): tritium harness {t['harness_tokens_per_s']:.0f} tokens/s, "
                  f"bare `model(input_ids)` loop {t['bare_tokens_per_s']:.0f} tokens/s, ratio {t['ratio']:.3f}."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--limit", type=int, help="chunks for every run (default: the full split)")
    parser.add_argument("--head", type=int, default=16, help="also report perplexity over the first N chunks")
    parser.add_argument("--throughput-chunks", type=int, default=4)
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/eval.json")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["meta"] = {"command": "python bench/bench_eval.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}

    model, tokenizer, _ = load_model(args.model)
    ids = tokenize_eval_text(tokenizer, load_eval_text("wikitext2"))
    float_state = {k: v.clone() for k, v in model.state_dict().items()}

    def record(name: str, res, extra: dict):
        results[name] = {"ppl_full": res.ppl, "chunks": res.n_chunks, f"ppl_first_{args.head}": res.ppl_first(args.head),
                         "tokens_per_s": res.tokens_per_second, "seconds": res.seconds, "chunk_nll": res.chunk_nll,
                         **extra}
        atomic_write_json(out, results)
        print(f"{name:34s} ppl(first {args.head}) {res.ppl_first(args.head):12.3f}   ppl(full, {res.n_chunks} chunks) "
              f"{res.ppl:12.3f}", flush=True)

    if "float" not in results:
        res = perplexity(model, ids, seqlen=args.seqlen, limit=args.limit, dataset="wikitext2")
        record("float", res, {"size": size_report(model).to_dict()})
    if "independent" not in results:
        start = time.perf_counter()
        ind = independent_gptq_ppl(model, tokenizer, require_data_file("wikitext2", "test"), args.seqlen, args.head)
        tritium_head = math.exp(sum(results["float"]["chunk_nll"][: args.head]) / args.head)
        results["independent"] = {"chunks": args.head, "ppl": ind, "tritium_ppl": tritium_head,
                                  "relative_difference": abs(ind - tritium_head) / ind,
                                  "seconds": time.perf_counter() - start}
        atomic_write_json(out, results)
        print(f"independent GPTQ loop, first {args.head} chunks: {ind:.4f} vs tritium {tritium_head:.4f}", flush=True)
    if "throughput" not in results:
        results["throughput"] = throughput(model, ids, args.seqlen, args.throughput_chunks, args.throughput_repeats)
        atomic_write_json(out, results)
        print(f"throughput: {results['throughput']}", flush=True)
    for name, grid in SETTINGS.items():
        if name in results:
            continue
        model.load_state_dict(float_state)
        qres = quantize_(model, RTNConfig(grid=grid))
        res = perplexity(model, ids, seqlen=args.seqlen, limit=args.limit, dataset="wikitext2")
        record(name, res, {"grid": grid.describe(), "quantize_seconds": qres.seconds,
                           "size": size_report(model, grid, qres.weights).to_dict()})
    table = markdown(results, args.head)
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
