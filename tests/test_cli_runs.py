"""Issue 18 from the command line: runs never overwrite each other, and their reports say what happened."""

import json
import re
import socket
import subprocess
import sys
import time

import pytest
import torch

from tritium.cli import main
from tritium.models import tiny_model

LOCK_FILE, RECORD_FILE = ".tritium.lock", "run.json"  # tritium.utils.runs's names, spelt out as a user sees them

QUIET = ["--eval", "none", "--no-float", "--no-progress"]
BAR = re.compile(r"\d+%\|")  # how a tqdm bar starts: "  0%|"


def rtn(tiny_folder, *extra):
    return ["quantize", "--model", str(tiny_folder), "--recipe", "w2g128-rtn", "--group", "32", *QUIET, *extra]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_is_refused_and_the_first_result_stays_whole(tiny_folder, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(rtn(tiny_folder, "--out", str(out))) == 0
    results = (out / "results.json").read_bytes()
    weights = (out / "model" / "model.safetensors").read_bytes()
    # a first writer still at work: its lock names a live process
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": writer.pid, "host": socket.gethostname(),
                                                 "started": "now", "started_epoch": time.time(),
                                                 "command": "quantize"}))
        capsys.readouterr()
        assert main(rtn(tiny_folder, "--out", str(out), "--bits", "3", "--overwrite")) == 2
        err = capsys.readouterr().err
        assert f"being written by another tritium process (pid {writer.pid}" in err and "--out" in err
    finally:
        writer.kill()
        writer.wait()
    assert (out / "results.json").read_bytes() == results
    assert (out / "model" / "model.safetensors").read_bytes() == weights


def test_a_non_empty_out_is_refused_without_overwrite(tiny_folder, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(rtn(tiny_folder, "--out", str(out))) == 0
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(rtn(tiny_folder, "--out", str(out), "--bits", "3")) == 2
    err = capsys.readouterr().err
    assert "already holds a finished `tritium quantize` run with other settings" in err and "--overwrite" in err
    assert json.loads((out / "results.json").read_text()) == first  # nothing was touched
    assert main(rtn(tiny_folder, "--out", str(out), "--bits", "3", "--overwrite")) == 0
    assert json.loads((out / "results.json").read_text())["recipe"]["grid"]["bits"] == 3
    assert json.loads((out / RECORD_FILE).read_text())["replaced"]["job"]["bits"] is None


def test_default_run_folders_of_runs_started_in_the_same_second_differ(tiny_folder, tiny_data, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20250101-120000")  # both runs start in the same second
    assert main(rtn(tiny_folder)) == 0
    assert main(rtn(tiny_folder)) == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["tiny-w2g128-rtn-20250101-120000", "tiny-w2g128-rtn-20250101-120000-2"]
    for name in folders:
        assert (tmp_path / "runs" / name / "results.json").is_file()


@pytest.mark.parametrize("save_format", ["packed", "fake"])
def test_a_killed_save_leaves_nothing_that_loads_and_the_next_run_clears_leftovers(tiny_folder, tiny_data, save_format,
                                                                                  tmp_path, monkeypatch, capsys):
    import contextlib

    import tritium.export.codes as codes
    import tritium.utils.io as io
    from tritium.models import load_model

    out = tmp_path / "run"
    real_atomic_directory = io.atomic_directory

    @contextlib.contextmanager
    def killed_before_the_rename(folder):  # every file of the packed model written, the swap not yet done
        with real_atomic_directory(folder) as tmp:
            yield tmp
            raise KeyboardInterrupt("killed while saving")

    def killed(*args, **kwargs):  # the last step of the fake-quant model's save
        raise KeyboardInterrupt("killed while saving")

    if save_format == "packed":
        monkeypatch.setattr(io, "atomic_directory", killed_before_the_rename)
    else:
        monkeypatch.setattr(codes, "write_codes", killed)
    with pytest.raises(KeyboardInterrupt):
        main(rtn(tiny_folder, "--out", str(out), "--format", save_format))
    monkeypatch.undo()
    assert not out.exists()  # no half-written model, no temporary, no lock: the run had made the folder itself
    # a run killed outright (SIGKILL) leaves its lock and a temporary copy of the model behind
    out.mkdir()
    pid = dead_pid()
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then",
                                             "started_epoch": time.time(), "command": "quantize"}))
    orphan = out / f".model.tritium-{pid}.x1y2z3.tmp"
    orphan.mkdir()
    (orphan / "config.json").write_text("{}")
    (orphan / "model.safetensors").write_bytes(b"\0" * 100_000)
    capsys.readouterr()
    assert main(rtn(tiny_folder, "--out", str(out), "--format", save_format)) == 0
    err = capsys.readouterr().err
    assert "took over the lock" in err and f"removed {orphan}" in err
    assert sorted(p.name for p in out.iterdir()) == ["model", "results.json", "results.md", RECORD_FILE]
    load_model(out / "model")


def test_a_resumed_run_says_so_and_counts_the_whole_run(tiny_folder, tiny_data, tmp_path, monkeypatch, capsys):
    from tritium.calib import pipeline

    out = tmp_path / "run"
    argv = ["quantize", "--model", str(tiny_folder), "--method", "gptq", "--bits", "2", "--group", "32",
            "--calib-samples", "2", "--calib-seqlen", "32", *QUIET, "--out", str(out),
            "--checkpoint-dir", str(out / "checkpoint")]
    original = pipeline.save_block_checkpoint

    def killed_after_block_zero(folder, index, *args):
        original(folder, index, *args)
        if index == 0:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(pipeline, "save_block_checkpoint", killed_after_block_zero)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.setattr(pipeline, "save_block_checkpoint", original)
    capsys.readouterr()
    assert main(argv) == 0  # the same command again resumes, without --overwrite
    err = capsys.readouterr().err
    assert "resumed from block 1 of 2" in err
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][-1]
    assert row["resumed_from_block"] == 1 and row["num_blocks"] == 2
    first, second = row["pieces"]
    assert (first["from_block"], first["to_block"], second["from_block"], second["to_block"]) == (0, 1, 1, 2)
    assert first["seconds"] > 0 and row["quantize_seconds"] > row["quantize_seconds_this_piece"]
    assert row["quantize_seconds"] == pytest.approx(row["quantize_seconds_this_piece"] + first["seconds"])
    assert row["seconds"] == pytest.approx(row["seconds_this_piece"] + first["seconds"])
    assert any("resumed from block 1 of 2" in note for note in results["notes"])
    # bit-exact: the same weights as a run never interrupted
    assert main(argv[:-4] + ["--out", str(tmp_path / "whole")]) == 0
    from safetensors.torch import load_file

    resumed, whole = load_file(out / "model" / "model.safetensors"), load_file(tmp_path / "whole" / "model" /
                                                                                 "model.safetensors")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_no_progress_shows_no_bar_at_all(tiny_folder, tiny_data, tmp_path, capsys, method):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    capsys.readouterr()
    assert main(["quantize", "--model", str(tiny_folder), "--method", method, "--bits", "2", "--group", "32",
                 "--calib-samples", "2", "--calib-seqlen", "32", "--eval", "wikitext2", "--seqlen", "64",
                 "--limit", "2", "--no-float", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert not BAR.search(err), err
    assert not transformers_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    assert main(["info", "--model", str(tiny_folder)]) == 0  # the next command without the flag has them back
    assert transformers_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()


def test_a_skip_pattern_that_matches_nothing_is_named(tiny_folder, tiny_data, tmp_path, capsys):
    assert main(rtn(tiny_folder, "--skip", "*.mlp.down_proj,*.mlp.dwon_proj", "--out", str(tmp_path / "run"))) == 0
    err = capsys.readouterr().err
    assert "--skip pattern '*.mlp.dwon_proj' matches none of the model's 14 linears" in err
    assert "model.layers.0.self_attn.q_proj" in err  # what the names look like
    assert "'*.mlp.down_proj' matches" not in err
    assert err.count("dwon_proj' matches none") == 1


def test_run_on_a_run_folder_suggests_its_model_folder(tiny_folder, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(rtn(tiny_folder, "--out", str(out))) == 0
    capsys.readouterr()
    assert main(["run", str(out), "--prompt", "hello", "--device", "cpu"]) == 2
    assert f"is a run folder, not a model folder: run `tritium run {out / 'model'}`" in capsys.readouterr().err


@pytest.mark.parametrize("loop", ["fast", "hf"])
def test_decoding_stops_at_the_model_s_context_with_a_warning(tmp_path, tokenizer, capsys, loop):
    folder = tmp_path / "short"
    tiny_model("llama", max_position_embeddings=16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompt = "The quick brown fox"
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert main(["run", str(folder), "--prompt", prompt, "--max-new-tokens", "40", "--device", "cpu",
                 "--loop", loop]) == 0
    err = capsys.readouterr().err
    assert (f"the prompt ({n_prompt} tokens) plus --max-new-tokens 40 exceeds the model's context "
            "(max_position_embeddings) of 16 tokens: generation stops at the limit") in err
    produced = int(re.search(r"(\d+) new tokens on cpu", err).group(1))
    assert produced <= 16 - n_prompt
    assert main(["run", str(folder), "--prompt", "word " * 20, "--max-new-tokens", "4", "--device", "cpu",
                 "--loop", loop]) == 2
    assert "no room is left for a new token" in capsys.readouterr().err
