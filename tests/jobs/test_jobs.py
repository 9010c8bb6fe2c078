"""The jobs as plain functions: the CLI and Python give the same results.json."""

import json
from dataclasses import MISSING, fields

import pytest

from tritium.cli import build_parser, main
from tritium.jobs import (DistillJob, EvalJob, ExportJob, IngestJob, InfoJob, PackJob, PretrainJob, QuantizeJob, RunJob,
                          SuiteJob, distill_model, evaluate_model, export_folder, model_info, pack_folder, quantize,
                          run_model)

TIMINGS = {"seconds", "quantize_seconds", "train_seconds", "peak_rss_mb", "tokens_per_second"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _results(folder):
    """results.json without timings, with the run folder's own path (e.g. of the training log) as <out>."""
    return _without_timings(json.loads((folder / "results.json").read_text().replace(str(folder), "<out>")))


# One command line per job; each job's fields must be exactly its command's flags, with the same defaults.
COMMANDS = [
    (QuantizeJob, ["quantize", "--model", "m"]),
    (EvalJob, ["eval", "--model", "m"]),
    (InfoJob, ["info", "--model", "m"]),
    (DistillJob, ["distill", "--model", "m"]),
    (PackJob, ["pack", "run"]),
    (RunJob, ["run", "m", "--prompt", "p"]),
    (ExportJob, ["export", "run"]),
    (IngestJob, ["data", "ingest", "docs", "--out", "tokens"]),
    (PretrainJob, ["pretrain", "--arch", "trilm", "--size", "tiny-xs", "--data", "docs"]),
    (SuiteJob, ["suite", "--data", "docs"]),
]
NOT_JOB_FLAGS = {"command", "data_command", "json"}  # the subcommand's name; how info prints


@pytest.mark.parametrize("job_class, argv", COMMANDS, ids=[argv[0] for _, argv in COMMANDS])
def test_each_job_takes_exactly_its_command_s_flags_with_their_defaults(job_class, argv):
    """So the CLI passes every flag on, and job_settings, which a run folder records to know a rerun of the
    same job, reads the same from the job as it did from the parsed flags."""
    parsed = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if k not in NOT_JOB_FLAGS}
    assert set(parsed) == {f.name for f in fields(job_class)}
    defaults = {f.name: f.default for f in fields(job_class) if f.default is not MISSING}  # argv gives the others
    assert {name: parsed[name] for name in defaults} == defaults


def test_quantize_from_the_cli_and_from_python_write_the_same_results(tiny_folder, tiny_data, tmp_path, capsys):
    flags = ["--bits", "4", "--group", "32", "--eval", "wikitext2", "--limit", "1", "--seqlen", "32"]
    assert main(["quantize", "--model", str(tiny_folder), *flags, "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    result = quantize(QuantizeJob(model=str(tiny_folder), bits=4, group=32, eval=["wikitext2"], limit=1, seqlen=32,
                                  no_progress=True, out=str(tmp_path / "py")))
    assert result.json_path == tmp_path / "py" / "results.json" and result.model_folder == tmp_path / "py" / "model"
    assert _results(tmp_path / "cli") == _results(tmp_path / "py")
    assert result.rows[-1]["perplexity"]["wikitext2"]["ppl"] > 1


def test_eval_and_info_jobs_match_the_cli(tiny_folder, tiny_data, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_folder), "--eval", "wikitext2", "--limit", "1", "--seqlen", "32",
                 "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    evaluate_model(EvalJob(model=str(tiny_folder), eval=["wikitext2"], limit=1, seqlen=32, no_progress=True,
                           out=str(tmp_path / "py")))
    assert _results(tmp_path / "cli") == _results(tmp_path / "py")
    capsys.readouterr()
    assert main(["info", "--model", str(tiny_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == model_info(InfoJob(model=str(tiny_folder)))


def test_distill_from_the_cli_and_from_python_write_the_same_results(tiny_folder, tiny_data, tmp_path, capsys):
    train = tmp_path / "train.txt"
    train.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    flags = ["--recipe", "ternaryllm-cpu", "--steps", "2", "--data", str(train), "--train-seqlen", "16",
             "--micro-batch-size", "2", "--group", "32", "--eval", "wikitext2", "--limit", "1", "--seqlen", "32"]
    assert main(["distill", "--model", str(tiny_folder), *flags, "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    result = distill_model(DistillJob(model=str(tiny_folder), recipe="ternaryllm-cpu", steps=2, train_data=[str(train)],
                                      train_seqlen=16, micro_batch_size=2, group=32, eval=["wikitext2"], limit=1,
                                      seqlen=32, no_progress=True, out=str(tmp_path / "py")))
    assert result.json_path == tmp_path / "py" / "results.json" and result.model_folder == tmp_path / "py" / "model"
    assert [row["model"] for row in result.rows] == ["float", "quantized"]
    assert _results(tmp_path / "cli") == _results(tmp_path / "py")


def test_pack_run_and_export_from_python_give_what_the_cli_gives(tiny_folder, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["quantize", "--model", str(tiny_folder), "--grid", "ternary", "--group", "channel", "--format", "fake",
                 "--eval", "none", "--no-float", "--no-progress", "--out", str(run)]) == 0
    assert main(["pack", str(run), "--out", str(tmp_path / "cli-packed")]) == 0
    packed = pack_folder(PackJob(run=str(run), out=str(tmp_path / "py-packed")))
    assert packed.out == tmp_path / "py-packed" and packed.linears == 14
    assert packed.packed_bytes == sum(f.stat().st_size for f in packed.out.iterdir())
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "cli-packed" / name).read_bytes() == (packed.out / name).read_bytes(), name
    capsys.readouterr()
    assert main(["run", str(packed.out), "--prompt", "The quick brown", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    said = capsys.readouterr()
    generated = run_model(RunJob(model=str(packed.out), prompt="The quick brown", max_new_tokens=5, device="cpu"))
    assert said.out == generated.text + "\n" and f"{generated.new_tokens} new tokens on cpu" in said.err
    report = export_folder(ExportJob(model=str(run), gguf=str(tmp_path / "py.gguf")))
    assert main(["export", str(run), "--gguf", str(tmp_path / "cli.gguf")]) == 0
    assert report.path == tmp_path / "py.gguf"
    assert (tmp_path / "py.gguf").read_bytes() == (tmp_path / "cli.gguf").read_bytes()


def test_ingest_and_pretrain_from_the_cli_and_from_python_write_the_same_files(tmp_path, capsys, corpus):
    from tritium.jobs import ingest_corpus, pretrain_model

    src = corpus(tmp_path / "text")
    assert main(["data", "ingest", str(src), "--out", str(tmp_path / "cli-tokens"), "--train-tokenizer", "320",
                 "--val-fraction", "0.25", "--no-progress"]) == 0
    made = ingest_corpus(IngestJob(sources=[str(src)], out=str(tmp_path / "py-tokens"), train_tokenizer=320,
                                   val_fraction=0.25, no_progress=True))
    assert made.folder.path == tmp_path / "py-tokens"
    for name in ("tokens.json", "train.bin", "val.bin"):
        assert (tmp_path / "cli-tokens" / name).read_bytes() == (tmp_path / "py-tokens" / name).read_bytes(), name

    flags = ["--steps", "2", "--seqlen", "32", "--micro-batch-size", "2", "--eval", "none"]
    assert main(["pretrain", "--arch", "trilm", "--size", "tiny-xs", "--data", str(tmp_path / "cli-tokens"), *flags,
                 "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    result = pretrain_model(PretrainJob(arch="trilm", size="tiny-xs", data=[str(tmp_path / "cli-tokens")], steps=2,
                                        seqlen=32, micro_batch_size=2, eval=[], no_progress=True,
                                        out=str(tmp_path / "py")))
    assert result.report == tmp_path / "py" / "report.md" and result.model_folder == tmp_path / "py" / "model"

    def suite_file(folder):
        entries = json.loads((folder / "suite.json").read_text())["entries"]
        return [_without_timings({k: v for k, v in e.items() if k != "mfu"}) for e in entries]

    assert suite_file(tmp_path / "cli") == suite_file(tmp_path / "py")
    assert suite_file(tmp_path / "py")[0]["val_loss"] == result.entry.val_loss
