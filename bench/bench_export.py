"""Exports scored where they run (issue 16): llama.cpp's perplexity of every GGUF tritium writes against
tritium's own figure on the same token ids, llama.cpp's decode speed, auto-round's GGUF export of the
same model beside them, and a compressed-tensors folder scored by plain transformers.

Part 1, a model whose widths all divide 256 (by default a FloatLM ``tiny-256`` that ``tritium pretrain``
trains here on the WikiText-2 validation articles; ``--model`` takes another folder): RTN and TesseraQ
on ``gguf:q2_k``, ``gguf:q3_k``, ``gguf:q4_k`` and ``gguf:tq1_0``. Each cell is the user's path:
``tritium quantize --grid gguf:TYPE --eval wikitext2``, then ``tritium export --format gguf``; then
llama.cpp (llama-cpp-python, in a child process so that a crash is recorded, not fatal) scores the
file on the chunks tritium scored and decodes a fixed number of tokens at batch 1. The float model is
evaluated in the same run. auto-round (``gguf:q2_k_s``, ``gguf:q3_k_s``, ``gguf:q4_k_s``; it has no
TQ1_0) quantizes the same model from the same calibration tokens as the TesseraQ recipe and writes its
own GGUF, scored by the same llama.cpp code. auto-round's files hold a quantized token embedding and a
Q6_K output head where tritium's hold F16, so each of its files is also scored with those two tensors
replaced by the F16 ones of tritium's file ("spliced"): the same linears under the same embedding.

Part 2, ``--w4-model`` (SmolLM2-135M, whose shipped weights are Q4_1, i.e. already 4-bit in groups of
32): RTN on ``gguf:q4_0`` and ``gguf:q4_1`` against llama.cpp, the shipped Q4_1 file itself against
tritium's float figure, and RTN W4g32 exported as compressed-tensors and scored by plain transformers in
an interpreter that never imports tritium (``bench_ct_scoring.py``'s scorer).

    TRITIUM_DATA=../shared/data OMP_NUM_THREADS=1 python bench/bench_export.py --threads 1 \\
        --out bench/results/export-2026-12-02.md

Intermediate runs and files go to ``--work``; a finished pretraining there is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(BENCH))  # the other benches' scorers

GGUF_TYPES = ("q2_k", "q3_k", "q4_k", "tq1_0")
METHODS = ("rtn", "tesseraq")
W4_TYPES = ("q4_0", "q4_1")
# auto-round's preset of each type: "_s" keeps every linear on the type, as tritium's grids do.
AUTOROUND_PRESETS = {"q2_k": "gguf:q2_k_s", "q3_k": "gguf:q3_k_s", "q4_k": "gguf:q4_k_s"}
AGREEMENT = 0.01  # issue 16: the runtime's perplexity within 1% of tritium's
# Replaced in the spliced auto-round files: the token embedding and the output head.
TABLE_TENSORS = ("token_embd.weight", "output.weight")


class BenchInputError(ValueError):
    """A flag or the environment cannot work; the message names the fix."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def relative_difference(theirs: float | None, ours: float | None) -> float | None:
    if theirs is None or ours is None:
        return None
    return abs(theirs - ours) / ours


# --------------------------------------------------------------------------- steps


def run_tritium(argv: list[str], log_file: Path) -> str | None:
    """``tritium ARGV`` in this process (its output kept in ``log_file``); None, or the error it ended with."""
    from tritium.cli import main as tritium_main

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = tritium_main(argv)
    except SystemExit as exit_:  # argparse refusing a flag
        code = exit_.code
    except Exception as err:  # a bug, not a refusal: kept with its traceback in the log
        traceback.print_exc(file=buffer)
        code = f"{type(err).__name__}: {err}"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(f"$ tritium {' '.join(argv)}\n{buffer.getvalue()}")
    if code == 0:
        return None
    errors = [line for line in buffer.getvalue().splitlines() if "error" in line.lower()]
    return errors[-1].strip() if errors else f"tritium {argv[0]} exited with {code} (log: {log_file})"


def run_child(argv: list[str], threads: int, timeout: float | None = None) -> tuple[list[dict], str | None]:
    """This script in a child process: the JSON lines it printed, and an error if it did not end cleanly."""
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    lines = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    if done.returncode:
        tail = [line for line in done.stderr.splitlines() if line.strip()]
        return lines, f"exit {done.returncode}: {tail[-1].strip() if tail else 'no message'}"
    return lines, None


def quantize_figures(run: Path) -> dict:
    """What ``tritium quantize --eval wikitext2`` reported in ``run``: perplexity, chunks, time, grid."""
    row = json.loads((run / "results.json").read_text())["rows"][-1]
    figure = row["perplexity"]["wikitext2"]
    return {"tritium_ppl": figure["ppl"], "tritium_chunk_nll": figure["chunk_nll"], "n_chunks": figure["n_chunks"],
            "seqlen": figure["seqlen"], "quantize_seconds": row.get("quantize_seconds"), "grid": row.get("grid"),
            "gguf_fallbacks": row.get("gguf_fallbacks") or {}}


def eval_figures(run: Path) -> dict:
    figure = json.loads((run / "results.json").read_text())["rows"][-1]["perplexity"]["wikitext2"]
    return {"ppl": figure["ppl"], "n_chunks": figure["n_chunks"], "seqlen": figure["seqlen"]}


def gguf_facts(path: Path) -> dict:
    """Size and tensor types of a GGUF file, read from the file itself (tritium's and auto-round's alike)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    types: dict[str, int] = {}
    linear_types: dict[str, int] = {}
    linear_bits = linear_params = 0
    tables = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        types[kind] = types.get(kind, 0) + 1
        if tensor.name in TABLE_TENSORS:
            tables[tensor.name] = kind
        elif tensor.name.startswith("blk.") and len(tensor.shape) == 2 and tensor.shape[1] > 1:
            linear_types[kind] = linear_types.get(kind, 0) + 1
            linear_bits += int(tensor.n_bytes) * 8
            linear_params += int(tensor.n_elements)
    return {"file_bytes": path.stat().st_size, "tensor_types": types, "linear_types": linear_types,
            "linear_bits_per_weight": linear_bits / max(linear_params, 1),
            "embedding_type": tables.get("token_embd.weight"),
            "output_type": tables.get("output.weight", "tied to the embedding")}


def llama_cpp_scores(gguf: Path, ids_file: Path, args, decode: bool = True) -> dict:
    """llama.cpp's perplexity of ``gguf`` on the saved chunks and its decode speed, from a child process.

    The decode runs on llama.cpp's default kernels; where those crash (its repacked Q4_0/Q4_1 kernels do on
    some AVX-512 machines) the perplexity line survives, and the decode is timed again on the plain kernels."""
    argv = ["--llama-cpp-child", str(gguf), "--ids-file", str(ids_file), "--threads", str(args.threads),
            "--decode-tokens", str(args.decode_tokens if decode else 0)]
    lines, error = run_child(argv, args.threads, timeout=args.child_timeout)
    out: dict = {}
    for line in lines:
        out.update(line)
    if error:
        out["llama_cpp_error"] = error
    if decode and args.decode_tokens and "llama_cpp_ppl" in out and "decode_tokens_per_s" not in out:
        lines, retry_error = run_child(argv + ["--decode-only", "--plain-kernels"], args.threads,
                                       timeout=args.child_timeout)
        for line in lines:
            out.update(line)
        out["decode_kernels"] = f"plain (the default kernels failed: {error})"
        if retry_error:
            out["llama_cpp_error"] = f"{error}; decode on the plain kernels: {retry_error}"
        elif "decode_tokens_per_s" in out:
            del out["llama_cpp_error"]  # kept in decode_kernels: the perplexity and a decode speed were measured
    elif "decode_tokens_per_s" in out:
        out["decode_kernels"] = "llama.cpp default"
    return out


def llama_cpp_child(gguf: Path, ids_file: Path, threads: int, decode_tokens: int, decode_only: bool = False,
                    plain_kernels: bool = False) -> None:
    """The child: prints the perplexity line first, so that a crash while decoding keeps it."""
    import numpy as np
    import torch

    from tritium.export.gguf import llama_cpp_chunk_nll, llama_cpp_without_repacking

    if not decode_only:
        chunks = torch.from_numpy(np.load(ids_file)).long()
        start = time.perf_counter()
        nll = llama_cpp_chunk_nll(gguf, chunks, n_threads=threads)
        print(json.dumps({"llama_cpp_ppl": math.exp(sum(nll) / len(nll)), "llama_cpp_chunk_nll": nll,
                          "llama_cpp_ppl_seconds": time.perf_counter() - start}), flush=True)
    if decode_tokens:
        from bench_decode import llama_cpp_child as decode

        with llama_cpp_without_repacking() if plain_kernels else contextlib.nullcontext():
            speed = decode(gguf, threads, decode_tokens)
        print(json.dumps({"decode_tokens_per_s": speed["decode_tokens_per_s"], "decode_new_tokens": decode_tokens,
                          "llama_cpp_system_info": speed["llama_cpp_system_info"]}), flush=True)


def save_eval_ids(model: str, args, out: Path) -> dict:
    """The first ``chunks`` × ``seqlen`` WikiText-2 test ids as tritium's evaluation tokenizes them."""
    import numpy as np

    from tritium.data import load_eval_text
    from tritium.eval import tokenize_eval_text
    from tritium.models.loader import load_tokenizer

    ids = tokenize_eval_text(load_tokenizer(model), load_eval_text("wikitext2", args.data))
    chunks = min(args.chunks_for(model), ids.shape[1] // args.seqlen)
    block = ids[0, : chunks * args.seqlen].view(chunks, args.seqlen).long().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, block)
    return {"chunks": chunks, "seqlen": args.seqlen, "sha256": hashlib.sha256(block.tobytes()).hexdigest()[:16]}


# --------------------------------------------------------------------------- the model whose widths divide 256


def wikitext_articles(data: str | None, out: Path) -> Path:
    """WikiText-2 validation split into its articles (a line `` = Title = `` starts one), one jsonl row each:
    pretraining needs whole documents to hold some out. No train split is staged here."""
    from tritium.data import require_data_file

    text = require_data_file("wikitext2", "valid", data).read_text(encoding="utf-8")
    articles, current = [], []
    for line in text.split("\n"):
        if re.match(r"^ = [^=].* = $", line) and current:
            articles.append("\n".join(current))
            current = []
        current.append(line)
    articles.append("\n".join(current))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": a}) + "\n" for a in articles if a.strip()))
    return out


def pretrained_model(args, work: Path) -> tuple[str, dict]:
    """The part-1 model: ``--model``, or a FloatLM that ``tritium pretrain`` trains (reused when finished)."""
    if args.model:
        return args.model, {"source": f"--model {args.model}"}
    run = work / f"pretrain-{args.pretrain_size}-{args.pretrain_tokens}tok-seq{args.seqlen}"
    articles = run.parent / "wiki-valid-articles.jsonl"
    argv = ["pretrain", "--arch", "float", "--size", args.pretrain_size, "--data", str(articles),
            "--tokens", str(args.pretrain_tokens), "--seqlen", str(args.seqlen), "--micro-batch-size", "4",
            "--eval", "none", "--no-progress", "--out", str(run)]
    reused = (run / "pretrain.json").is_file()
    if not reused:
        wikitext_articles(args.data, articles)
        log(f"pretraining: tritium {' '.join(argv)}")
        error = run_tritium(argv, work / "logs" / "pretrain.log")
        if error:
            raise RuntimeError(f"tritium pretrain failed: {error}")
    trained = json.loads((run / "pretrain.json").read_text())
    info = {"source": "tritium pretrain", "command": "tritium " + " ".join(argv), "reused_from_earlier_run": reused,
            "data": "WikiText-2 validation articles (jsonl, one article a row; 5% of articles held out)",
            **{k: trained[k] for k in ("arch", "size", "params", "steps", "tokens", "train_seconds",
                                       "tokens_per_second", "val_loss", "val_ppl")}}
    return str(run / "model"), info


def quantize_cell(model: str, method: str, gtype: str, args, work: Path, ids_file: Path) -> dict:
    cell = {"model": model, "method": method, "type": gtype}
    run = work / "runs" / f"{Path(model).name}-{method}-{gtype}"
    recipe = ["--method", "rtn"] if method == "rtn" else ["--recipe", args.tesseraq_recipe]
    quantize = ["quantize", "--model", model, *recipe, "--grid", f"gguf:{gtype}", "--eval", "wikitext2",
                "--limit", str(args.chunks_for(model)), "--seqlen", str(args.seqlen), "--no-float", "--no-progress",
                "--overwrite", "--out", str(run)]
    log(f"{method} gguf:{gtype} on {model}")
    cell["commands"] = ["tritium " + " ".join(quantize)]
    error = run_tritium(quantize, work / "logs" / f"{run.name}.log")
    if error:
        return cell | {"error": f"quantize: {error}"}
    cell.update(quantize_figures(run))
    gguf = work / "gguf" / f"{run.name}.gguf"
    export = ["export", str(run), "--format", "gguf", "--out", str(gguf), "--overwrite"]
    cell["commands"].append("tritium " + " ".join(export))
    error = run_tritium(export, work / "logs" / f"{run.name}-export.log")
    if error:
        return cell | {"error": f"export: {error}"}
    cell.update(gguf_facts(gguf), gguf=str(gguf))
    cell.update(llama_cpp_scores(gguf, ids_file, args))
    cell["difference"] = relative_difference(cell.get("llama_cpp_ppl"), cell["tritium_ppl"])
    return cell


# --------------------------------------------------------------------------- auto-round


def autoround_child(model: str, preset: str, iters: int, out: Path, calib: dict, data: str | None) -> None:
    """The child: auto-round quantizes ``model`` with ``preset`` from tritium's calibration tokens and writes
    its GGUF; prints one JSON line (an error line where auto-round refuses)."""
    import torch

    try:
        from auto_round import AutoRound
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tritium.data import calibration_samples

        tokenizer = AutoTokenizer.from_pretrained(model)
        float_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        ids = calibration_samples(tokenizer, calib["source"], calib["samples"], calib["seqlen"], calib.get("seed", 0),
                                  data)
        # Exact token ids, with an all-ones mask so that no padding heuristic masks any of them.
        samples = [{"input_ids": ids[i : i + 1].clone(), "attention_mask": torch.ones(1, ids.shape[1], dtype=torch.long)}
                   for i in range(ids.shape[0])]
        start = time.perf_counter()
        compressor = AutoRound(float_model, tokenizer=tokenizer, scheme=preset, iters=iters, dataset=samples,
                               nsamples=len(samples), seqlen=ids.shape[1], device_map="cpu", amp=False,
                               enable_torch_compile=False, seed=42)
        compressor.quantize_and_save(str(out), format=preset)
        files = sorted(out.rglob("*.gguf"))
        if len(files) != 1:
            raise RuntimeError(f"auto-round wrote {len(files)} GGUF files under {out}: {[str(f) for f in files]}")
        print(json.dumps({"gguf": str(files[0]), "quantize_and_export_seconds": time.perf_counter() - start}))
    except Exception as err:  # recorded in the results word for word
        print(json.dumps({"error": f"{type(err).__name__}: {err}".strip()}))


def splice_tables(base: Path, donor: Path, out: Path) -> None:
    """``base`` with its token embedding and output head taken from ``donor``: every other tensor and all the
    metadata byte for byte from ``base``."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, Keys

    source, tables = GGUFReader(base), GGUFReader(donor)
    replacement = {t.name: t for t in tables.tensors if t.name in TABLE_TENSORS}
    arch = source.fields[Keys.General.ARCHITECTURE].contents()
    writer = GGUFWriter(out, arch)
    for field in source.fields.values():
        if field.name == Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    tensors = [replacement.get(t.name, t) for t in source.tensors]
    for tensor in tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()


def autoround_rows(model: str, gtype: str, iters: int, args, work: Path, ids_file: Path, calib: dict,
                   tritium_file: str | None) -> list[dict]:
    preset = AUTOROUND_PRESETS.get(gtype, f"gguf:{gtype}")  # a type it lacks is still asked, for its own error
    row = {"model": model, "method": f"auto-round iters {iters}", "type": gtype, "preset": preset, "iters": iters}
    out = work / "autoround" / f"{gtype}-iters{iters}"
    log(f"auto-round {preset} iters {iters} on {model}")
    argv = ["--autoround-child", model, "--preset", preset, "--iters", str(iters), "--child-out", str(out),
            "--calib-json", json.dumps(calib)] + (["--data", args.data] if args.data else [])
    lines, error = run_child(argv, args.threads, timeout=args.child_timeout)
    result = lines[-1] if lines else {"error": error or "no result"}
    if "error" in result:
        return [row | {"error": result["error"]}]
    gguf = Path(result["gguf"])
    row.update(result, **gguf_facts(gguf))
    row.update(llama_cpp_scores(gguf, ids_file, args))
    rows = [row]
    if tritium_file:
        spliced = gguf.with_name(gguf.stem + "-f16-tables.gguf")
        try:
            splice_tables(gguf, Path(tritium_file), spliced)
        except Exception as err:
            return rows + [row | {"method": row["method"] + ", F16 tables spliced", "error": f"splice: {err}"}]
        twin = {k: row[k] for k in ("model", "type", "preset", "iters")}
        twin.update(method=row["method"] + ", F16 tables spliced", gguf=str(spliced), spliced_from=tritium_file,
                    **gguf_facts(spliced))
        twin.update(llama_cpp_scores(spliced, ids_file, args, decode=False))
        rows.append(twin)
    return rows


# --------------------------------------------------------------------------- part 2: W4g32


def w4_rows(args, work: Path) -> list[dict]:
    """RTN on Q4_0/Q4_1 against llama.cpp, the shipped GGUF against tritium's float figure, and compressed-tensors
    W4g32 against plain transformers."""
    from bench_ct_scoring import score_plainly
    from tritium.data import require_data_file
    from tritium.models.loader import resolve_model_source

    model = args.w4_model
    ids_file = work / "ids" / "w4-model.npy"
    ids = save_eval_ids(model, args, ids_file)
    rows: list[dict] = []
    float_run = work / "runs" / "w4-float"
    error = run_tritium(["eval", "--model", model, "--eval", "wikitext2", "--limit", str(ids["chunks"]), "--seqlen",
                         str(args.seqlen), "--no-progress", "--overwrite", "--out", str(float_run)],
                        work / "logs" / "w4-float.log")
    float_ppl = None if error else eval_figures(float_run)["ppl"]
    rows.append({"model": model, "method": "float", "type": "-", "tritium_ppl": float_ppl, "ids": ids,
                 **({"error": error} if error else {})})
    source = resolve_model_source(model)
    if source.gguf_file:  # the named default reads a shipped GGUF: llama.cpp scores that same file
        shipped = Path(source.location) / source.gguf_file
        row = {"model": model, "method": "shipped file", "type": "as shipped", "tritium_ppl": float_ppl,
               "gguf": str(shipped), **gguf_facts(shipped), **llama_cpp_scores(shipped, ids_file, args)}
        row["difference"] = relative_difference(row.get("llama_cpp_ppl"), float_ppl)
        rows.append(row)
    for gtype in args.w4_types:
        rows.append(quantize_cell(model, "rtn", gtype, args, work, ids_file) | {"float_ppl": float_ppl})
    # compressed-tensors: uniform 4-bit asymmetric in groups of 32, the layout of Q4_1
    run = work / "runs" / "w4-ct"
    row = {"model": model, "method": "rtn", "type": "compressed-tensors W4g32", "runtime": "plain transformers"}
    quantize = ["quantize", "--model", model, "--recipe", "w4g128-rtn", "--group", "32", "--eval", "wikitext2",
                "--limit", str(ids["chunks"]), "--seqlen", str(args.seqlen), "--no-float", "--no-progress",
                "--overwrite", "--out", str(run)]
    export = ["export", str(run), "--format", "compressed-tensors", "--out", str(work / "ct-w4g32"), "--overwrite"]
    row["commands"] = ["tritium " + " ".join(quantize), "tritium " + " ".join(export)]
    log(f"compressed-tensors W4g32 on {model}")
    error = (run_tritium(quantize, work / "logs" / "w4-ct.log")
             or run_tritium(export, work / "logs" / "w4-ct-export.log"))
    if error:
        return rows + [row | {"error": error}]
    row.update(quantize_figures(run))
    try:
        plain = score_plainly(work / "ct-w4g32", require_data_file("wikitext2", "test", args.data), args.seqlen,
                              ids["chunks"])
    except BaseException as err:  # score_plainly ends with SystemExit when the scorer was not plain
        return rows + [row | {"error": f"plain scorer: {err}"}]
    row.update(runtime_ppl=plain["ppl"], runtime_chunks=plain["chunks"], asymmetric=plain["asymmetric"],
               tritium_imported_by_scorer=plain["tritium_imported"], float_ppl=float_ppl)
    row["difference"] = relative_difference(plain["ppl"], row["tritium_ppl"])
    return rows + [row]


# --------------------------------------------------------------------------- report


def versions() -> dict:
    found = {}
    for name in ("torch", "transformers", "llama_cpp_python", "gguf", "auto-round", "compressed-tensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def agreement(difference: float | None) -> str:
    if difference is None:
        return "–"
    return "pass" if difference <= AGREEMENT else "**fail**"


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _types(counts: dict | None) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted((counts or {}).items())) or "–"


def kernel_notes(rows: list[dict]) -> list[str]:
    """A line for each row whose decode was timed on llama.cpp's plain kernels, and why."""
    return [f"- decode on the plain kernels: {r['method']} {r['type']}: {r['decode_kernels']}" for r in rows
            if r.get("decode_kernels", "llama.cpp default") != "llama.cpp default"]


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    threads = "thread" if s["threads"] == 1 else "threads"
    lines = ["# GGUF and compressed-tensors exports, scored by the runtimes that load them", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {m['cpu']} ({' '.join(m['simd_flags']) or 'no AVX/AMX flags listed'}), {m['cores']} CPUs, "
             f"load average {m['load_average_at_start']} at start",
             f"- threads: {s['threads']} torch {threads} and {s['threads']} llama.cpp {threads}, on a machine shared with "
             "other jobs: the tokens/s below compare rows of this run, they are no speed claims",
             f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
             f"- perplexity: WikiText-2 test, GPTQ protocol (test rows joined by \"\\n\\n\", non-overlapping chunks of "
             f"{s['seqlen']} tokens); llama.cpp and plain transformers score the same token ids as tritium, one fresh "
             "context per chunk; 'within 1%' is |runtime − tritium| / tritium ≤ 1%",
             f"- llama.cpp decode: batch 1, greedy, {s['decode_tokens']} new tokens after a short prompt",
             f"- bench time: {report.get('wall_seconds', 0) / 60:.1f} min wall, {report.get('cpu_seconds', 0) / 60:.1f} "
             "min CPU (this process and its children)", ""]
    part1 = report.get("part1") or {}
    if part1:
        info, base = part1["model_info"], part1.get("float_ppl")
        lines += [f"## {part1['model']}: RTN and TesseraQ on GGUF grids", "",
                  f"- model: {info.get('command') or info['source']}"
                  + (f" ({info['size']}, {info['params']['total'] / 1e6:.1f}M parameters of which "
                     f"{info['params']['linear'] / 1e6:.2f}M in decoder linears, {info['tokens']} tokens in "
                     f"{info['train_seconds']:.0f} s, held-out ppl {info['val_ppl']:.1f}; "
                     + ("trained by an earlier run of this bench, reused)" if info["reused_from_earlier_run"]
                        else "trained in this run)")
                     if info.get("size") else ""),
                  f"- chunks: {part1['ids']['chunks']} × {part1['ids']['seqlen']} (ids sha256 {part1['ids']['sha256']}); "
                  f"float perplexity on them: {_num(base, '.3f')}"
                  + (f" (error: {part1['float_error']})" if part1.get("float_error") else ""),
                  f"- TesseraQ: shipped recipe `{s['tesseraq_recipe']}` with its grid replaced by gguf:TYPE; "
                  f"settings {json.dumps(part1.get('tesseraq_settings'))}", "",
                  "| method | type | linears in the file | file MB | linear bits/weight | tritium ppl (× float) | "
                  "llama.cpp ppl | difference | within 1% | llama.cpp decode tok/s | quantize s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in part1["cells"]:
            if "error" in c and "tritium_ppl" not in c:
                lines.append(f"| {c['method']} | {c['type']} | error: {c['error']} |  |  |  |  |  |  |  |  |")
                continue
            ratio = f" ({c['tritium_ppl'] / base:.2f}×)" if base else ""
            lines.append(
                f"| {c['method']} | {c['type']} | {_types(c.get('linear_types'))} | "
                f"{_num(c.get('file_bytes') and c['file_bytes'] / 1e6, '.1f')} | "
                f"{_num(c.get('linear_bits_per_weight'), '.3f')} | {c['tritium_ppl']:.3f}{ratio} | "
                f"{_num(c.get('llama_cpp_ppl'), '.3f')} | {_num(c.get('difference'), '.3%')} | "
                f"{agreement(c.get('difference'))} | {_num(c.get('decode_tokens_per_s'), '.0f')} | "
                f"{_num(c.get('quantize_seconds'), '.0f')} |")
        problems = [f"- failed: {c['method']} {c['type']}: {c.get('error') or c.get('llama_cpp_error')}"
                    for c in part1["cells"] if c.get("error") or c.get("llama_cpp_error")]
        problems += kernel_notes(part1["cells"] + part1.get("autoround", []))
        lines += [""] + problems + ([""] if problems else [])
        ar = part1.get("autoround") or []
        if ar:
            lines += ["### auto-round's GGUF export of the same model", "",
                      f"auto-round {report['versions'].get('auto-round')} on the CPU, fp32 (amp off), no torch.compile, "
                      f"calibrated on the TesseraQ recipe's tokens ({s['calibration']}); `iters 0` is its RTN mode. "
                      "Scored by the same llama.cpp code on the same chunks. 'F16 tables spliced': the same file with "
                      "its token embedding and output head replaced by the F16 tensors of tritium's RTN file of that "
                      "type, so that only the linears differ from tritium's rows.", "",
                      "| auto-round | preset | linears in the file | embedding / output | file MB | linear bits/weight | "
                      "llama.cpp ppl (× float) | llama.cpp decode tok/s | quantize + export s |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in ar:
                if "error" in r:
                    lines.append(f"| {r['method']} | {r['preset']} | error: `{r['error']}` |  |  |  |  |  |  |")
                    continue
                ppl = r.get("llama_cpp_ppl")
                ratio = f" ({ppl / base:.2f}×)" if ppl and base else ""
                lines.append(
                    f"| {r['method']} | {r['preset']} | {_types(r.get('linear_types'))} | "
                    f"{r.get('embedding_type')} / {r.get('output_type')} | {r['file_bytes'] / 1e6:.1f} | "
                    f"{r['linear_bits_per_weight']:.3f} | {_num(ppl, '.3f')}{ratio}"
                    + (f" (error: {r['llama_cpp_error']})" if r.get("llama_cpp_error") else "")
                    + f" | {_num(r.get('decode_tokens_per_s'), '.0f')} | "
                    f"{_num(r.get('quantize_and_export_seconds'), '.0f')} |")
            lines.append("")
    w4 = report.get("w4") or []
    if w4:
        base = w4[0].get("tritium_ppl")
        lines += [f"## {report['settings']['w4_model']}: 4-bit in groups of 32", "",
                  f"- chunks: {w4[0]['ids']['chunks']} × {w4[0]['ids']['seqlen']} (ids sha256 {w4[0]['ids']['sha256']}); "
                  f"float perplexity (tritium): {_num(base, '.3f')}", "",
                  "| row | format | linears in the file | file MB | tritium ppl | runtime | runtime ppl | difference | "
                  "within 1% | decode tok/s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in w4[1:]:
            if "error" in r and "tritium_ppl" not in r:
                lines.append(f"| {r['method']} | {r['type']} | error: {r['error']} |  |  |  |  |  |  |  |")
                continue
            runtime = r.get("runtime", "llama.cpp")
            value = r.get("runtime_ppl", r.get("llama_cpp_ppl"))
            lines.append(
                f"| {r['method']} | {r['type']} | {_types(r.get('linear_types'))} | "
                f"{_num(r.get('file_bytes') and r['file_bytes'] / 1e6, '.1f')} | {_num(r.get('tritium_ppl'), '.3f')} | "
                f"{runtime} | {_num(value, '.3f')} | {_num(r.get('difference'), '.3%')} | {agreement(r.get('difference'))} | "
                f"{_num(r.get('decode_tokens_per_s'), '.0f')} |")
        problems = [f"- failed: {r['method']} {r['type']}: {r.get('error') or r.get('llama_cpp_error')}" for r in w4
                    if r.get("error") or r.get("llama_cpp_error")] + kernel_notes(w4)
        lines += [""] + problems + ([""] if problems else [])
    lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


NOTES = [
    "tritium ppl is what `tritium quantize --eval wikitext2` reports for the quantized model in memory; the file "
    "is then written by `tritium export --format gguf`, which reads every tensor back with gguf's dequantizers "
    "(bit-exact on a GGUF grid) before keeping it.",
    "llama.cpp quantizes activations on its own (Q8_K/Q8_0 dot products), which is the source of its small "
    "differences from tritium's fp32 matmuls on the same weights.",
    "tritium's files keep the token embedding and the output head in F16 (`tritium export`'s default); "
    "auto-round's presets quantize the embedding to the type and the head to Q6_K, which makes its files "
    "smaller and costs perplexity on a model this small with a 49k vocabulary, hence the spliced rows.",
    "SmolLM2-135M as shipped is a Q4_1 GGUF: its 'float' weights are 4-bit in groups of 32 already, so RTN on "
    "gguf:q4_1 finds the same scales and minima and is lossless by construction. Q4_0 (symmetric) and "
    "compressed-tensors W4g32 (asymmetric, but with an integer zero point, which cannot hold Q4_1's float "
    "minimum) round those weights anew onto a shifted grid.",
]


# --------------------------------------------------------------------------- main


def parse_list(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    wrong = [t for t in items if t not in allowed]
    if wrong:
        raise BenchInputError(f"{flag}: {wrong} not among {', '.join(allowed)}")
    return items


def parse_iters(text: str) -> list[int]:
    try:
        iters = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BenchInputError(f"--autoround-iters takes integers separated by commas (0 for its RTN mode), "
                              f"got {text!r}") from None
    if any(i < 0 for i in iters):
        raise BenchInputError(f"--autoround-iters must be ≥ 0, got {text!r}")
    return iters


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="part 1: an HF folder whose widths divide 256 (default: pretrain one)")
    p.add_argument("--pretrain-size", default="tiny-256", help="tritium pretrain --size of the default model")
    p.add_argument("--pretrain-tokens", type=int, default=160_000, help="its training tokens (536 tok/s on 1 thread)")
    p.add_argument("--types", default=",".join(GGUF_TYPES), help=f"part 1 GGUF types, from {', '.join(GGUF_TYPES)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"part 1 methods, from {', '.join(METHODS)}")
    p.add_argument("--tesseraq-recipe", default="w2g128-tesseraq-cpu",
                   help="shipped recipe or YAML whose TesseraQ settings run (its grid is replaced)")
    p.add_argument("--autoround-iters", default="0,50",
                   help="auto-round runs per type, comma separated SignRound iterations (0: its RTN mode); '' skips")
    p.add_argument("--w4-model", default="smollm2-135m", help="part 2 model ('none' skips part 2)")
    p.add_argument("--w4-types", default=",".join(W4_TYPES), help=f"part 2 GGUF types, from {', '.join(W4_TYPES)}")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per perplexity chunk (and the pretrain context)")
    p.add_argument("--chunks", type=int, default=16, help="part 1: perplexity chunks")
    p.add_argument("--w4-chunks", type=int, default=8, help="part 2: perplexity chunks")
    p.add_argument("--decode-tokens", type=int, default=64, help="llama.cpp: new tokens timed at batch 1")
    p.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads")
    p.add_argument("--child-timeout", type=float, default=1800, help="seconds one llama.cpp or auto-round child may run")
    p.add_argument("--data", default=os.environ.get("TRITIUM_DATA"))
    p.add_argument("--work", default="/tmp/tritium-bench-export", help="runs, files and logs")
    p.add_argument("--out", default="bench/results/export.md", help="writes OUT (.md) and its .json")
    # children
    p.add_argument("--llama-cpp-child", help=argparse.SUPPRESS)
    p.add_argument("--ids-file", help=argparse.SUPPRESS)
    p.add_argument("--decode-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--plain-kernels", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--autoround-child", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--calib-json", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.llama_cpp_child:
        llama_cpp_child(Path(args.llama_cpp_child), Path(args.ids_file), args.threads, args.decode_tokens,
                        args.decode_only, args.plain_kernels)
        return 0
    if args.autoround_child:
        autoround_child(args.autoround_child, args.preset, args.iters, Path(args.child_out), json.loads(args.calib_json),
                        args.data)
        return 0
    from tritium.utils.runs import claim_output

    claim_output(args.out, Path(__file__).name, overwrite=True)  # a second bench on the same --out is refused
    try:
        args.types = parse_list(args.types, GGUF_TYPES, "--types")
        args.methods = parse_list(args.methods, METHODS, "--methods")
        args.w4_types = parse_list(args.w4_types, W4_TYPES, "--w4-types")
        iters = parse_iters(args.autoround_iters)
        for flag, value, least in (("--seqlen", args.seqlen, 2), ("--chunks", args.chunks, 1),
                                   ("--w4-chunks", args.w4_chunks, 1), ("--threads", args.threads, 1),
                                   ("--decode-tokens", args.decode_tokens, 0)):
            if value < least:
                raise BenchInputError(f"{flag} must be at least {least}, got {value}")
        from tritium.data import require_data_file

        require_data_file("wikitext2", "test", args.data)
        require_data_file("wikitext2", "valid", args.data)
    except Exception as err:  # BenchInputError, or data that is not staged
        parser.error(str(err))

    import torch

    from bench_autoround import machine
    from tritium.recipes import load_recipe
    from tritium.utils.io import atomic_write_json, atomic_write_text

    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    command = ["python", "bench/bench_export.py", *(sys.argv[1:] if argv is None else argv)]
    recipe = load_recipe(args.tesseraq_recipe)
    calib = dict(recipe["calib"])
    report = {"command": " ".join(command), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
              "versions": versions(),
              "settings": {"threads": args.threads, "seqlen": args.seqlen, "chunks": args.chunks,
                           "w4_chunks": args.w4_chunks, "decode_tokens": args.decode_tokens, "types": args.types,
                           "methods": args.methods, "tesseraq_recipe": args.tesseraq_recipe, "calibration": calib,
                           "autoround_iters": iters, "w4_model": args.w4_model, "w4_types": args.w4_types},
              "notes": NOTES}
    started = time.perf_counter()

    def save():
        # Rewritten after every step, so that a long run leaves its finished rows behind. CPU seconds (this
        # process and its finished children) stay meaningful where the machine is shared or the run paused.
        report["wall_seconds"] = time.perf_counter() - started
        report["cpu_seconds"] = sum(getattr(resource.getrusage(who), f) for who in
                                    (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
        atomic_write_json(out.with_suffix(".json"), report)
        atomic_write_text(out.with_suffix(".md"), markdown(report))

    model, info = pretrained_model(args, work)
    # Each model has its own chunk count; the test ids and their count are fixed per model before any cell runs.
    args.chunks_for = lambda m: args.w4_chunks if m == args.w4_model else args.chunks
    ids_file = work / "ids" / "part1.npy"
    part1 = report["part1"] = {"model": model, "model_info": info, "ids": save_eval_ids(model, args, ids_file),
                               "tesseraq_settings": {"method_args": recipe.get("method_args"), "calib": calib},
                               "cells": [], "autoround": []}
    float_run = work / "runs" / "part1-float"
    error = run_tritium(["eval", "--model", model, "--eval", "wikitext2", "--limit", str(args.chunks), "--seqlen",
                         str(args.seqlen), "--no-progress", "--overwrite", "--out", str(float_run)],
                        work / "logs" / "part1-float.log")
    part1["float_ppl"] = None if error else eval_figures(float_run)["ppl"]
    if error:
        part1["float_error"] = error
    save()
    for gtype in args.types:
        for method in args.methods:
            part1["cells"].append(quantize_cell(model, method, gtype, args, work, ids_file))
            save()
    for gtype in args.types if iters else []:
        # the F16 tables to splice in: those of tritium's RTN file of this type where it ran (any method's are the
        # float model's own embedding and head)
        files = sorted((c for c in part1["cells"] if c["type"] == gtype and c.get("gguf")),
                       key=lambda c: c["method"] != "rtn")
        tritium_file = files[0]["gguf"] if files else None
        # a type auto-round has no preset for is asked once, for its own error message
        for n in iters if gtype in AUTOROUND_PRESETS else iters[:1]:
            part1["autoround"] += autoround_rows(model, gtype, n, args, work, ids_file, calib, tritium_file)
            save()
    if args.w4_model != "none":
        report["w4"] = w4_rows(args, work)
        save()
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
