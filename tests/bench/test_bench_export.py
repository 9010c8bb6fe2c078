"""bench/bench_export.py on a tiny random model: every file is scored by its runtime on tritium's chunks,
the 1% agreement is computed, and a step that fails is recorded instead of ending the bench."""

import json
import math
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader

from bench_scripts import load_bench
from tritium.export.gguf import write_gguf
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model, tiny_tokenizer
from tritium.quant import TernaryGrid

# TesseraQ cut down to seconds on a one-block model; the bench reads only method, method_args and calib.
TINY_TESSERAQ = """\
method: tesseraq
grid: {kind: uniform, bits: 2, group: 128, symmetric: false}
method_args: {soft_fractions: [0.5], steps_per_stage: 2, batch_size: 2, awq_init: false, clip: false, dst: false}
calib: {source: wikitext2-valid, samples: 2, seqlen: 32, seed: 0}
"""


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_export")


def _model_folder(path: Path, intermediate: int) -> Path:
    tiny_model("llama", hidden_size=256, intermediate_size=intermediate, num_hidden_layers=1).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_the_validation_text_splits_into_articles_at_top_level_titles(bench, tmp_path):
    wiki = tmp_path / "wikitext-2-raw-v1"
    wiki.mkdir()
    (wiki / "wiki.valid.raw").write_text(" \n = First = \n text one \n = = Part = = \n more \n = Second = \n two \n")
    rows = [json.loads(line)["text"] for line in bench.wikitext_articles(str(tmp_path), tmp_path / "a.jsonl").open()]
    assert len(rows) == 2  # the blank line before the first title is no article; " = = Part = = " splits nothing
    assert rows[0].startswith(" = First = ") and " = = Part = = " in rows[0]
    assert rows[1].startswith(" = Second = ")


def test_bad_flags_fail_before_any_work(bench, tmp_path, capsys):
    for flags, words in ((["--types", "q7_k"], "--types: ['q7_k']"), (["--autoround-iters", "x"], "--autoround-iters"),
                         (["--chunks", "0"], "--chunks must be at least 1")):
        with pytest.raises(SystemExit):
            bench.main([*flags, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md")])
        assert words in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_the_spliced_file_takes_only_the_tables_from_the_donor(bench, tmp_path, tokenizer):
    model = tiny_model("llama", hidden_size=256, intermediate_size=512, num_hidden_layers=1)
    weights = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel"))).weights
    write_gguf(model, tmp_path / "base.gguf", weights, "tq1_0", embedding_type="q8_0", tokenizer=tokenizer)
    write_gguf(model, tmp_path / "donor.gguf", weights, "tq2_0", embedding_type="f16", tokenizer=tokenizer)
    bench.splice_tables(tmp_path / "base.gguf", tmp_path / "donor.gguf", tmp_path / "spliced.gguf")
    types = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "spliced.gguf").tensors}
    assert types["token_embd.weight"] == types["output.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "TQ1_0"
    base, spliced = GGUFReader(tmp_path / "base.gguf"), GGUFReader(tmp_path / "spliced.gguf")
    assert bytes(spliced.fields["tokenizer.ggml.model"].parts[-1]) == bytes(base.fields["tokenizer.ggml.model"].parts[-1])
    donor = {t.name: t for t in GGUFReader(tmp_path / "donor.gguf").tensors}
    for tensor in spliced.tensors:
        source = donor if tensor.name in bench.TABLE_TENSORS else {t.name: t for t in base.tensors}
        assert (tensor.data == source[tensor.name].data).all(), tensor.name
    pytest.importorskip("llama_cpp")
    facts = bench.gguf_facts(tmp_path / "spliced.gguf")
    assert facts["embedding_type"] == "F16" and facts["linear_types"] == {"TQ1_0": 7}
    from tritium.export.gguf import llama_cpp_chunk_nll

    assert all(math.isfinite(x) for x in llama_cpp_chunk_nll(tmp_path / "spliced.gguf", torch.arange(3, 35)[None]))


def test_tiny_run_scores_every_file_on_tritiums_chunks(bench, tmp_path, tiny_data):
    pytest.importorskip("llama_cpp")
    model = _model_folder(tmp_path / "tiny", intermediate=512)
    recipe = tmp_path / "tiny-tesseraq.yaml"
    recipe.write_text(TINY_TESSERAQ)
    out = tmp_path / "results" / "export.md"
    assert bench.main(["--model", str(model), "--types", "q4_k", "--methods", "rtn,tesseraq", "--tesseraq-recipe",
                       str(recipe), "--autoround-iters", "", "--w4-model", str(model), "--w4-types", "q4_0",
                       "--seqlen", "64", "--chunks", "2", "--w4-chunks", "2", "--decode-tokens", "4",
                       "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["command"].endswith(f"--out {out}") and report["settings"]["threads"] == 1
    part1 = report["part1"]
    assert part1["ids"]["chunks"] == 2 and math.isfinite(part1["float_ppl"])
    assert [(c["method"], c["type"]) for c in part1["cells"]] == [("rtn", "q4_k"), ("tesseraq", "q4_k")]
    for cell in part1["cells"]:
        assert "error" not in cell and "llama_cpp_error" not in cell, cell
        assert cell["linear_types"] == {"Q4_K": 7} and cell["n_chunks"] == 2
        # llama.cpp scored the very chunks tritium scored: chunk by chunk, not only on average
        assert cell["llama_cpp_chunk_nll"] == pytest.approx(cell["tritium_chunk_nll"], rel=0.01)
        assert cell["difference"] < bench.AGREEMENT and cell["decode_tokens_per_s"] > 0
    assert part1["cells"][0]["tritium_ppl"] != part1["cells"][1]["tritium_ppl"]  # TesseraQ moved the weights
    w4 = {(r["method"], r["type"]): r for r in report["w4"]}
    assert set(w4) == {("float", "-"), ("rtn", "q4_0"), ("rtn", "compressed-tensors W4g32")}
    assert w4[("rtn", "q4_0")]["linear_types"] == {"Q4_0": 7} and w4[("rtn", "q4_0")]["difference"] < bench.AGREEMENT
    ct = w4[("rtn", "compressed-tensors W4g32")]
    assert ct["tritium_imported_by_scorer"] is False and ct["runtime_chunks"] == 2
    assert ct["difference"] < bench.AGREEMENT
    text = out.read_text()
    assert text.count("| pass |") == 4 and "no speed claims" in text and "1 torch thread" in text


def test_a_failing_cell_is_recorded_and_the_bench_goes_on(bench, tmp_path, tiny_data):
    model = _model_folder(tmp_path / "tiny", intermediate=272)  # 272 = 17·16: no GGUF type holds down_proj
    out = tmp_path / "export.md"
    assert bench.main(["--model", str(model), "--types", "q2_k,q3_k", "--methods", "rtn", "--autoround-iters", "",
                       "--w4-model", "none", "--seqlen", "64", "--chunks", "1", "--work", str(tmp_path / "work"),
                       "--out", str(out)]) == 0
    cells = json.loads(out.with_suffix(".json").read_text())["part1"]["cells"]
    assert [c["type"] for c in cells] == ["q2_k", "q3_k"]  # the first failure did not stop the second cell
    for cell in cells:
        assert cell["error"].startswith("quantize: ") and "stores blocks of 256" in cell["error"]
    assert out.read_text().count("| error: quantize: ") == 2


@pytest.mark.parametrize("retry_error", [None, "exit -11: no message"])
def test_a_decode_crash_keeps_the_perplexity_and_times_the_plain_kernels(bench, monkeypatch, tmp_path, retry_error):
    calls = []

    def child(argv, threads, timeout=None):
        calls.append(argv)
        if len(calls) == 1:  # perplexity printed, then the default kernels crash while decoding
            return [{"llama_cpp_ppl": 5.0}], "exit -11: no message"
        return ([], retry_error) if retry_error else ([{"decode_tokens_per_s": 10.0}], None)

    monkeypatch.setattr(bench, "run_child", child)
    args = bench.build_parser().parse_args(["--threads", "1"])
    out = bench.llama_cpp_scores(tmp_path / "m.gguf", tmp_path / "ids.npy", args)
    assert out["llama_cpp_ppl"] == 5.0 and calls[1][-2:] == ["--decode-only", "--plain-kernels"]
    assert out["decode_kernels"] == "plain (the default kernels failed: exit -11: no message)"
    if retry_error:
        assert "decode_tokens_per_s" not in out and "decode on the plain kernels: exit -11" in out["llama_cpp_error"]
    else:
        assert out["decode_tokens_per_s"] == 10.0 and "llama_cpp_error" not in out
