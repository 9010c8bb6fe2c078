import copy
import json
import math

import pytest
import torch

from tritium.cli import main
from tritium.data.tokens import TokenFolder
from tritium.spectra import load_suite
from tritium.eval.size import size_report
from tritium.models.spectra import SpectraConfigError, build_model
from tritium.jobs.suite import SPECTRA_QUANT_BITS, SuiteConfig, make_quantlm, quantlm_grid, run_suite

def _config(**overrides):
    settings = dict(sizes=["tiny-xs", "tiny-s"], kinds=["float", "trilm", "quant"], quant_bits=[4, 8], seqlen=32,
                    train={"steps": 3, "micro_batch_size": 2}, eval_datasets=[], calib_samples=4)
    settings.update(overrides)
    return SuiteConfig(**settings)


def test_a_suite_trains_quantizes_evaluates_and_reports_and_a_rerun_reuses_it(tmp_path, token_folder):
    messages = []
    paths, entries = run_suite(_config(), token_folder.path, tmp_path, progress=False, log=messages.append)
    families = [(e.family, e.size) for e in entries]
    assert families == [(f, s) for s in ("tiny-xs", "tiny-s")
                        for f in ("FloatLM", "TriLM", "QuantLM-4bit", "QuantLM-8bit")]
    by = {(e.family, e.size): e for e in entries}
    for size in ("tiny-xs", "tiny-s"):
        floatlm, trilm, q4 = by["FloatLM", size], by["TriLM", size], by["QuantLM-4bit", size]
        assert floatlm.params == trilm.params and floatlm.linear_params == trilm.linear_params
        # same parameters, fewer bits: ternary linears are 1.6 bits, 4-bit codes 4 (+ scales)
        assert trilm.bits < q4.bits < floatlm.bits
        assert floatlm.tokens == trilm.tokens == 3 * 2 * 32 and trilm.mfu > 0
        assert by["QuantLM-8bit", size].val_loss == pytest.approx(floatlm.val_loss, abs=0.02)
    assert by["TriLM", "tiny-s"].linear_params > by["TriLM", "tiny-xs"].linear_params
    report = paths.report.read_text()
    assert "TriLM" in report and "QuantLM-4bit" in report and paths.figures
    assert [e.to_dict() for e in load_suite(tmp_path)] == [e.to_dict() for e in entries]
    # the TriLM folder is a plain Llama checkpoint
    config = json.loads((tmp_path / "tiny-s/trilm/model/config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tritium_spectra"]["unpacked"]

    messages.clear()
    _, again = run_suite(_config(), token_folder.path, tmp_path, progress=False, log=messages.append)
    assert not any("training" in m or "GPTQ" in m for m in messages)  # every piece was on disk
    assert [e.to_dict() for e in again] == [e.to_dict() for e in entries]


def test_quantlm_follows_spectra_grids_and_bad_suites_fail_clearly(token_folder, tmp_path):
    assert all(quantlm_grid(b).bits == b and quantlm_grid(b).symmetric for b in (3, 4, 6, 8))
    assert quantlm_grid(3).group == quantlm_grid(4).group == 128
    assert quantlm_grid(6).group == "channel" and quantlm_grid(8).group == "channel"
    with pytest.raises(SpectraConfigError, match="add 'float'"):
        SuiteConfig(sizes=["tiny-xs"], kinds=["trilm", "quant"])
    with pytest.raises(SpectraConfigError, match="Spectra's"):
        SuiteConfig(sizes=["tiny-xs"], quant_bits=[5])
    with pytest.raises(SpectraConfigError, match="size 'mega'"):
        SuiteConfig(sizes=["mega"])
    with pytest.raises(SpectraConfigError, match="architecture 'octal'"):
        SuiteConfig(sizes=["tiny-xs"], kinds=["octal"])
    with pytest.raises(SpectraConfigError, match=r"unknown zero-shot task\(s\) \['pika'\]"):
        SuiteConfig(sizes=["tiny-xs"], zeroshot=["piqa", "pika"])
    with pytest.raises(Exception, match="fewer than one sequence"):
        run_suite(_config(seqlen=100_000), token_folder.path, tmp_path, progress=False)


def test_quantlm_is_symmetric_gptq_at_3_4_6_and_8_bits_with_groups_of_128_at_3_and_4():
    assert SPECTRA_QUANT_BITS == (3, 4, 6, 8)
    floatlm = build_model("float", "tiny-xs", vocab_size=300, context=32, seed=0).eval()
    calibration = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    bits_per_weight = {}
    for bits in SPECTRA_QUANT_BITS:
        model = copy.deepcopy(floatlm)
        result = make_quantlm(model, bits, calibration)
        assert result.method == "gptq" and len(result.weights) == 2 * 7  # every decoder linear of both layers
        modules = dict(model.named_modules())
        for name, q in result.weights.items():
            linear = modules[name]
            assert 0 <= int(q.codes.min()) and int(q.codes.max()) <= 2**bits - 1
            assert torch.all(q.zero == 2 ** (bits - 1))  # symmetric: the zero point sits mid-grid, never fitted
            # g128 at 3 and 4 bits (a 160-wide input gets a shorter second group), one scale per row at 6 and 8
            assert q.layout.n_groups == (math.ceil(linear.in_features / 128) if bits <= 4 else 1)
            torch.testing.assert_close(linear.weight.data, q.dequantize())  # the model now holds the grid's values
        bits_per_weight[bits] = size_report(model, result.grid, result.weights).linear_bits_per_weight
    assert bits_per_weight[3] < bits_per_weight[4] < bits_per_weight[6] < bits_per_weight[8] < 16


def test_the_cli_pretrains_from_raw_text_and_runs_a_suite(tmp_path, capsys, corpus):
    src = corpus(tmp_path / "text")
    code = main(["pretrain", "--arch", "trilm", "--size", "tiny-xs", "--data", str(src), "--train-tokenizer", "320",
                 "--steps", "2", "--seqlen", "32", "--micro-batch-size", "2", "--eval", "none", "--out",
                 str(tmp_path / "one"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "TriLM tiny-xs: held-out loss" in out and "MFU" in out
    assert TokenFolder.is_folder(tmp_path / "one/tokens") and (tmp_path / "one/report.md").is_file()
    code = main(["suite", "--sizes", "tiny-xs", "--kinds", "float,tri", "--data", str(tmp_path / "one/tokens"),
                 "--steps", "2", "--seqlen", "32", "--micro-batch-size", "2", "--eval", "none", "--out",
                 str(tmp_path / "suite"), "--no-progress"])
    assert code == 0
    assert "| FloatLM" in capsys.readouterr().out
    assert main(["pretrain", "--arch", "quinary", "--size", "tiny-xs", "--data", str(src)]) == 2
    assert "architecture 'quinary' is unknown" in capsys.readouterr().err
    assert main(["pretrain", "--arch", "trilm", "--size", "tiny-xs", "--data", str(tmp_path / "one/tokens"),
                 "--seqlen", "100000", "--steps", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "fewer than one sequence" in capsys.readouterr().err


def test_the_shipped_suite_recipes_load():
    from tritium.jobs.suite import suite_config_from_recipe

    cpu = suite_config_from_recipe("suite-cpu")
    assert len(cpu.sizes) >= 3 and cpu.kinds == ["float", "trilm", "quant"] and cpu.quant_bits == [3, 4]
    assert cpu.zeroshot and cpu.zeroshot_limit  # the issue asks for zero-shot accuracy in the report
    gpu = suite_config_from_recipe("suite-gpu", sizes=["tiny-xs"], train={"tokens": 1000})
    assert gpu.sizes == ["tiny-xs"] and gpu.train["tokens"] == 1000 and gpu.train["micro_batch_size"] == 32
    with pytest.raises(SpectraConfigError, match="sizes"):
        suite_config_from_recipe(None)


def test_a_token_folder_refuses_a_tokenizer_or_split_other_than_its_own(tmp_path, token_folder, capsys):
    run = ["pretrain", "--arch", "trilm", "--size", "tiny-xs", "--data", str(token_folder.path), "--steps", "1",
           "--seqlen", "32", "--micro-batch-size", "2", "--eval", "none", "--no-progress"]
    assert main(run + ["--train-tokenizer", "320", "--out", str(tmp_path / "a")]) == 2
    assert "--train-tokenizer cannot apply" in capsys.readouterr().err
    assert main(run + ["--tokenizer", "smollm2-135m", "--out", str(tmp_path / "b")]) == 2
    assert "fixes the tokenizer" in capsys.readouterr().err
    assert main(run + ["--val-fraction", "0.5", "--out", str(tmp_path / "c")]) == 2
    assert "fixes the split" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")  # refused before any training
    # naming the folder's own tokenizer and split is no contradiction
    assert main(run + ["--tokenizer", str(token_folder.path), "--val-fraction", "0.2", "--out", str(tmp_path / "d")]) == 0


def test_a_rerun_on_raw_text_refuses_another_tokenizer_for_the_tokens_it_made(tmp_path, capsys, corpus):
    src = corpus(tmp_path / "text")
    run = ["pretrain", "--arch", "float", "--size", "tiny-xs", "--data", str(src), "--steps", "1", "--seqlen", "32",
           "--micro-batch-size", "2", "--eval", "none", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(run + ["--train-tokenizer", "320"]) == 0
    capsys.readouterr()
    assert main(run + ["--tokenizer", "smollm2-135m"]) == 2  # a finished run is never written over unasked
    assert "already holds a finished `tritium pretrain` run with other settings" in capsys.readouterr().err
    assert main(run + ["--tokenizer", "smollm2-135m", "--overwrite"]) == 2  # told to, the tokens it made still rule
    assert "fixes the tokenizer" in capsys.readouterr().err
