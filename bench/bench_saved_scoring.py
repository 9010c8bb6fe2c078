"""A saved model scored without tritium's evaluation code, against the figure its run reported.

For each run folder given, a fresh interpreter loads ``<run>/model`` with plain
``AutoModelForCausalLM.from_pretrained`` (it imports tritium only when the folder is packed,
since only tritium's modules can run packed codes) and computes WikiText-2 perplexity with the
GPTQ reference loop written out here (HF rows joined by "\\n\\n", non-overlapping chunks, mean
NLL). The run's ``results.json`` says which chunks it evaluated; the script scores the same ones
and prints the relative difference (issue 14 asks for ≤ 0.1%).

    TRITIUM_DATA=../shared/data python bench/bench_saved_scoring.py runs/<w3g128-cpu run> runs/<w2g128-cpu run> \\
        --out bench/results/saved-scoring.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tritium.data import require_data_file
from tritium.utils.hardware import cpu_name
from tritium.utils.io import atomic_write_json, atomic_write_text

# The GPTQ reference loop, written out so that no tritium code scores; each scorer's source starts with it.
PERPLEXITY_LOOP = r'''
import json, sys
import torch


def wikitext_perplexity(model, tokenizer, test_file, seqlen, chunks):
    rows = [line if line.strip() else "" for line in open(test_file, encoding="utf-8")]
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids
    chunks = min(chunks, ids.numel() // seqlen)
    nll = 0.0
    with torch.no_grad():
        for i in range(chunks):
            batch = ids[:, i * seqlen:(i + 1) * seqlen]
            logits = model(batch).logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:])) * seqlen
    return {"ppl": float(torch.exp(torch.tensor(nll / (chunks * seqlen)))), "chunks": chunks}
'''

# Runs in a fresh interpreter; argv: model folder, test file, seqlen, chunks. Prints one JSON line.
PLAIN_SCORER = PERPLEXITY_LOOP + r'''
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

folder, test_file, seqlen, chunks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = AutoConfig.from_pretrained(folder)
packed = (getattr(config, "quantization_config", None) or {}).get("format") == "packed"
if packed:
    import tritium  # noqa: F401  only tritium's modules run packed codes
elif hasattr(config, "quantization_config"):
    # a fake-quant folder holds plain float weights; its quantization_config only records how they were made
    del config.quantization_config
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, config=config, torch_dtype=torch.float32)
model.eval()
print(json.dumps(wikitext_perplexity(model, tokenizer, test_file, seqlen, chunks)
                 | {"packed": packed, "tritium_imported": "tritium" in sys.modules}))
'''


def reported(run: Path) -> tuple[float, int, int]:
    """The quantized row's WikiText-2 perplexity, chunk count and chunk length from ``results.json``."""
    results = json.loads((run / "results.json").read_text())
    row = results["rows"][-1]
    figure = row["perplexity"]["wikitext2"]
    seqlen = (results.get("recipe") or {}).get("eval", {}).get("seqlen", 2048)
    return float(figure["ppl"]), int(figure["n_chunks"]), int(seqlen)


def score_plainly(model_folder: Path, test_file: Path, seqlen: int, chunks: int) -> dict:
    return run_scorer(PLAIN_SCORER, model_folder, test_file, seqlen, chunks)


def run_scorer(source: str, model_folder: Path, test_file: Path, seqlen: int, chunks: int) -> dict:
    """Run a scorer's ``source`` in a fresh interpreter on ``model_folder``; its last line of JSON."""
    proc = subprocess.run([sys.executable, "-c", source, str(model_folder), str(test_file), str(seqlen),
                           str(chunks)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the plain scorer failed on {model_folder}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by `tritium quantize`")
    parser.add_argument("--data", help="folder of the evaluation data (default $TRITIUM_DATA)")
    parser.add_argument("--out", type=Path, help="a .md file; a .json beside it gets the raw figures")
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    test_file = require_data_file("wikitext2", "test", args.data)
    rows = []
    for run in args.runs:
        ppl, chunks, seqlen = reported(run)
        start = time.perf_counter()
        plain = score_plainly(run / "model", test_file, seqlen, chunks)
        rel = abs(plain["ppl"] - ppl) / ppl
        rows.append({"run": str(run), "tritium_ppl": ppl, "plain_ppl": plain["ppl"], "chunks": chunks,
                     "seqlen": seqlen, "relative_difference": rel, "packed": plain["packed"],
                     "tritium_imported": plain["tritium_imported"], "seconds": time.perf_counter() - start})
        print(f"{run}: tritium {ppl:.4f}, plain transformers {plain['ppl']:.4f} ({rel:.4%}) on {chunks} chunks")
    if args.out:
        lines = [f"Machine: {cpu_name()}. Date: {time.strftime('%Y-%m-%d')}.", "",
                 "| run | format | chunks | tritium | plain transformers | difference |", "|---|---|---|---|---|---|"]
        lines += [f"| {Path(r['run']).name} | {'packed' if r['packed'] else 'fake'} | {r['chunks']} | "
                  f"{r['tritium_ppl']:.4f} | {r['plain_ppl']:.4f} | {r['relative_difference']:.4%} |" for r in rows]
        atomic_write_text(args.out, "\n".join(lines) + "\n")
        atomic_write_json(args.out.with_suffix(".json"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
