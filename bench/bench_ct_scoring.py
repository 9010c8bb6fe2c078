"""A compressed-tensors export scored by plain transformers, against `tritium eval` of the run it came from.

A fresh interpreter that never imports tritium (it checks) loads the exported folder with
``AutoModelForCausalLM.from_pretrained`` (compressed-tensors decompresses it; asymmetric folders
need ``CompressedTensorsConfig(dequantize=True)``, see the exporter's notes) in float32 and computes
WikiText-2 perplexity with the GPTQ reference loop written out here (HF rows joined by "\\n\\n",
non-overlapping chunks, mean NLL) on the chunks `tritium eval` scored. Run on one result:

    TRITIUM_DATA=../shared/data tritium quantize --model smollm2-135m --recipe w4g128-rtn --group 32 \\
        --no-float --eval none --out /tmp/ct-run
    tritium export /tmp/ct-run --format compressed-tensors
    TRITIUM_DATA=../shared/data tritium eval --model /tmp/ct-run/model --eval wikitext2 --limit 4 --out /tmp/ct-eval
    tritium export /tmp/ct-run --format compressed-tensors --scale-dtype float32 --out /tmp/ct-run/ct-f32-scales
    TRITIUM_DATA=../shared/data python bench/bench_ct_scoring.py /tmp/ct-run/compressed-tensors \\
        /tmp/ct-run/ct-f32-scales --tritium-results /tmp/ct-eval/results.json --out bench/results/ct-scoring.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_saved_scoring import PERPLEXITY_LOOP, run_scorer
from tritium.data import require_data_file
from tritium.utils.hardware import cpu_name
from tritium.utils.io import atomic_write_json, atomic_write_text

# Runs in a fresh interpreter; argv: folder, test file, seqlen, chunks. Prints one JSON line.
CT_SCORER = PERPLEXITY_LOOP + r'''
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

folder, test_file, seqlen, chunks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
qconfig = AutoConfig.from_pretrained(folder).quantization_config
groups = qconfig["config_groups"].values()
asymmetric = any(not g["weights"]["symmetric"] for g in groups)
kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if asymmetric else {}
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
print(json.dumps(wikitext_perplexity(model, tokenizer, test_file, seqlen, chunks)
                 | {"asymmetric": asymmetric, "format": qconfig["format"],
                    "tritium_imported": "tritium" in sys.modules,
                    "compressed_tensors_imported": "compressed_tensors" in sys.modules}))
'''


def tritium_figure(results_json: Path) -> tuple[float, int, int]:
    """WikiText-2 perplexity, chunk count and chunk length of the last row of a `tritium eval` results.json."""
    results = json.loads(results_json.read_text())
    figure = results["rows"][-1]["perplexity"]["wikitext2"]
    return float(figure["ppl"]), int(figure["n_chunks"]), int(figure.get("seqlen", 2048))


def score_plainly(folder: Path, test_file: Path, seqlen: int, chunks: int) -> dict:
    plain = run_scorer(CT_SCORER, folder, test_file, seqlen, chunks)
    if plain["tritium_imported"] or not plain["compressed_tensors_imported"]:
        raise SystemExit(f"the scorer was not plain transformers + compressed-tensors: {plain}")
    return plain


def scale_dtype(folder: Path) -> str:
    """The dtype the folder stores its first linear's scales in."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith(".weight_scale"):
                    return str(f.get_slice(key).get_dtype())
    return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path,
                        help="folders written by `tritium export --format compressed-tensors` from one run")
    parser.add_argument("--tritium-results", type=Path, required=True,
                        help="results.json of `tritium eval` on the run's model folder")
    parser.add_argument("--data", help="folder of the evaluation data (default $TRITIUM_DATA)")
    parser.add_argument("--out", type=Path, help="a .md file; a .json beside it gets the raw figures")
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    test_file = require_data_file("wikitext2", "test", args.data)
    ppl, chunks, seqlen = tritium_figure(args.tritium_results)
    rows = []
    for folder in args.folders:
        start = time.perf_counter()
        plain = score_plainly(folder, test_file, seqlen, chunks)
        rel = abs(plain["ppl"] - ppl) / ppl
        rows.append({"folder": str(folder), "scale_dtype": scale_dtype(folder), "tritium_ppl": ppl,
                     "plain_ppl": plain["ppl"], "chunks": plain["chunks"], "seqlen": seqlen,
                     "relative_difference": rel, "asymmetric": plain["asymmetric"],
                     "seconds": time.perf_counter() - start})
        print(f"{folder}: tritium eval {ppl:.4f}, plain transformers + compressed-tensors {plain['ppl']:.4f} "
              f"({rel:.4%}) on {plain['chunks']} chunks of {seqlen}")
    if args.out:
        lines = [f"Machine: {cpu_name()}. Date: {time.strftime('%Y-%m-%d')}. Plain transformers loads in float32"
                 + (" with CompressedTensorsConfig(dequantize=True) (asymmetric zero points)"
                    if any(r["asymmetric"] for r in rows) else "") + ".", "",
                 "| folder | scales | chunks | tritium eval | plain transformers + compressed-tensors | difference |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r['folder']} | {r['scale_dtype']} | {r['chunks']} x {seqlen} | {ppl:.4f} | "
                  f"{r['plain_ppl']:.4f} | {r['relative_difference']:.4%} |" for r in rows]
        atomic_write_text(args.out, "\n".join(lines) + "\n")
        atomic_write_json(args.out.with_suffix(".json"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
