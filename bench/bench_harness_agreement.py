"""tritium's zero-shot scorer beside lm-evaluation-harness on one model: acc and acc_norm per task, and
request by request whether both score the same (context, continuation) strings to the same log-likelihood.

    python bench/bench_harness_agreement.py --model smollm2-135m --tasks piqa,arc_easy,hellaswag --limit 200 \\
        --out bench/results/harness-agreement-smollm2.md

Both scorers run on the same loaded model, the same local documents ($TRITIUM_DATA) and the same first
``--limit`` documents of each task; lm-eval through ``tritium.eval.harness`` (its HFLM and its own task
definitions, offline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def compare(model, tokenizer, tasks, limit, data_path=None, batch_size=16) -> dict:
    from tritium.eval.harness import evaluate_with_harness, harness_version
    from tritium.eval.zeroshot import TASKS, loglikelihoods, score_docs

    start = time.perf_counter()
    harness = evaluate_with_harness(model, tokenizer, tasks, limit, data_path, batch_size, progress=False,
                                    log_samples=True)
    harness_seconds = time.perf_counter() - start
    report = {"lm_eval_version": harness_version(), "limit": limit, "tasks": {},
              "lm_eval_seconds": harness_seconds}
    tritium_seconds = 0.0
    for task in tasks:
        docs = TASKS[task].load(data_path)[:limit]
        pairs = [(c, k) for d in docs for c, k in zip(d.contexts, d.continuations)]
        start = time.perf_counter()
        scores = loglikelihoods(model, tokenizer, pairs, batch_size, progress=False)
        tritium_seconds += time.perf_counter() - start
        ours = score_docs(docs, scores, TASKS[task].metrics)
        theirs = harness[task]
        samples = sorted(theirs.pop("samples"), key=lambda s: s["doc_id"])
        their_pairs = [tuple(a) for s in samples for a in s["arguments"]]
        their_scores = [float(r[0]) for s in samples for r in s["filtered_resps"]]
        same_text = sum(a == b for a, b in zip(pairs, their_pairs))
        diffs = [abs(a[0] - b) for a, b in zip(scores, their_scores)]
        report["tasks"][task] = {
            "n_docs": len(docs), "lm_eval_n_docs": theirs["n_docs"],
            "tritium": ours, "lm_eval": {k: v for k, v in theirs.items() if k != "n_docs"},
            "requests": len(pairs), "same_request_text": same_text,
            "max_abs_loglikelihood_diff": max(diffs) if diffs else None,
        }
    report["tritium_seconds"] = tritium_seconds
    return report


def markdown(report: dict, command: str) -> str:
    lines = [f"# tritium vs lm-eval {report['lm_eval_version']} (first {report['limit']} documents per task)", "",
             f"`{command}`", "",
             "| task | metric | tritium | lm-eval | difference (points) | same request text | max |Δ log-lik| |",
             "|---|---|---|---|---|---|---|"]
    for task, r in report["tasks"].items():
        for metric, value in r["tritium"].items():
            theirs = r["lm_eval"].get(metric)
            diff = f"{100 * (value - theirs):+.2f}" if theirs is not None and metric != "ppl" else "–"
            lines.append(f"| {task} | {metric} | {value:.4f} | {theirs:.4f} | {diff} | "
                         f"{r['same_request_text']}/{r['requests']} | {r['max_abs_loglikelihood_diff']:.2e} |")
    lines.append("")
    lines.append(f"lm-eval {report['lm_eval_seconds']:.0f} s (with loading its task documents), tritium's scorer "
                 f"{report['tritium_seconds']:.0f} s of log-likelihoods; both on the same loaded model")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="piqa,arc_easy,hellaswag")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", help="evaluation data folder (default $TRITIUM_DATA)")
    parser.add_argument("--out", help="markdown report (a .json beside it)")
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)

    from tritium.models import load_model

    model, tokenizer, _ = load_model(args.model)
    report = compare(model, tokenizer, args.tasks.split(","), args.limit, args.data, args.batch_size)
    command = "python bench/bench_harness_agreement.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(report, command)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
