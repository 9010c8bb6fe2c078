"""The jobs as plain functions: the CLI and Python give the same results.json."""

import json

from tritium.cli import main
from tritium.jobs import EvalJob, InfoJob, QuantizeJob, evaluate_model, model_info, quantize

TIMINGS = {"seconds", "quantize_seconds", "peak_rss_mb", "tokens_per_second"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _results(folder):
    return _without_timings(json.loads((folder / "results.json").read_text()))


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
