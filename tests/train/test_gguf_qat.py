"""The QAT chain and end-to-end scale tuning on llama.cpp's block formats: a student on ``gguf:TYPE`` starts
exactly at its PTQ model, trains the format's own fp16 d and dmin over fixed sub-block integers, and its
GGUF export is bit for bit what it trained."""

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from tritium.cli import main
from tritium.export.gguf import write_gguf
from tritium.export.gguf_tensors import decode_tensor, encode_tensor
from tritium.export.hf import save_fake_quantized
from tritium.methods import config_from_dict, quantize_
from tritium.models import load_model, tiny_model, tiny_tokenizer
from tritium.quant import GGUF_BLOCK_TYPES, GGUFBlockGrid
from tritium.quant.grids import QuantConfigError, grid_to_dict, sub_block_factors
from tritium.train.distill import DistillConfig, distill, prepare_student
from tritium.train.gguf_qat import GGUFQATLinear
from tritium.train.start import start_codes

TEXT = " ".join(f"The quick brown fox number {i} jumps over the lazy dog." for i in range(200))
CHAIN_TYPES = ["q2_k", "q4_k", "tq2_0"]


def wide_llama(intermediate=512, seed=0):
    """One block whose widths divide the k-quants' 256-weight super-blocks (``intermediate`` 288: down_proj
    falls back to llama.cpp's type)."""
    return tiny_model("llama", seed=seed, num_hidden_layers=1, hidden_size=256, intermediate_size=intermediate,
                      num_attention_heads=4, num_key_value_heads=2)


def ptq_folder(tmp_path, gtype, method="rtn", intermediate=512):
    """A fake-quant folder as `tritium quantize --grid gguf:TYPE` saves it (weights, config, codes, fallbacks)."""
    model = wide_llama(intermediate)
    calibration = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    result = quantize_(model, config_from_dict(method, {"kind": "gguf", "type": gtype}),
                       None if method == "rtn" else calibration)
    folder = tmp_path / f"ptq-{gtype}-{method}"
    save_fake_quantized(model, tiny_tokenizer(), folder, result.method, grid_to_dict(result.grid), (),
                        result.method_args, weights=result.weights, grid_overrides=result.grid_overrides_dict())
    return folder, result


def gguf_config(gtype, **overrides):
    base = dict(grid=GGUFBlockGrid(gtype), loss={"off_weight": 1.0, "kl_weight": 1.0},
                train={"steps": 6, "micro_batch_size": 4, "progress": False,
                       "optim": {"lr": 1e-3, "lr_quant": 3e-3, "schedule": "constant"}})
    return DistillConfig(**(base | overrides))


def assert_encodes_exactly(qweight):
    """gguf's own dequantizer reads back the weight bit for bit (the encoder refuses what the type cannot hold)."""
    qtype = GGMLQuantizationType[qweight.grid.type.upper()]
    assert (decode_tensor(encode_tensor(qweight, qtype), qtype) == qweight.dequantize().numpy()).all()


def assert_on_the_format(qweight):
    """Per super-block (or block) one fp16 d (and dmin), the sub-block integers in the format's ranges."""
    grid = qweight.grid
    per_super = grid.super_block // grid.group if grid.super_block else 1
    if grid.super_block:
        _, _, exact = sub_block_factors(qweight.scale.reshape(-1, per_super), grid.format.sub_scale)
        assert bool(exact.all())
        if grid.has_min:
            _, _, exact = sub_block_factors((-qweight.shift).reshape(-1, per_super), grid.format.sub_min)
            assert bool(exact.all())
    else:
        assert torch.equal(qweight.scale.half().float(), qweight.scale)
    assert int(qweight.codes.max()) <= grid.max_code


@pytest.mark.parametrize("gtype", CHAIN_TYPES)
@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("trainable", ["all", "scales"])
def test_step_zero_is_exactly_the_ptq_model_on_a_gguf_grid(tmp_path, gtype, method, trainable):
    folder, ptq = ptq_folder(tmp_path, gtype, method)
    reference, _, _ = load_model(folder)
    config = gguf_config(gtype, init_from=str(folder), trainable=trainable)
    student = wide_llama()  # the float model distill would start from
    students = prepare_student(student, config, config.start_source())
    assert set(students) == set(ptq.weights) and all(isinstance(m, GGUFQATLinear) for m in students.values())
    for name, module in students.items():
        q = module.to_quantized()
        want = ptq.weights[name]
        assert torch.equal(q.codes, want.codes) and torch.equal(q.scale, want.scale), name
        assert (q.shift is None) == (want.shift is None) and (q.shift is None or torch.equal(q.shift, want.shift))
        assert torch.equal(module.quantized_weight().detach(), want.dequantize()), name
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(student(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("gtype", CHAIN_TYPES)
@pytest.mark.parametrize("trainable", ["scales", "all"])
def test_training_on_a_gguf_grid_stays_on_the_format_and_exports_bit_exactly(tmp_path, gtype, trainable):
    folder, ptq = ptq_folder(tmp_path, gtype, "gptq")
    model = wide_llama()
    sequences = torch.randint(0, 500, (8, 16), generator=torch.Generator().manual_seed(0))
    # latents at a rate below a Q4_K step (the tiny model's weights are about 0.02): a start this close moves
    # little, as qat-w2g128-cpu's 5e-5 does on SmolLM2
    train = {"steps": 6, "micro_batch_size": 4, "progress": False,
             "optim": {"lr": 1e-5, "lr_quant": 3e-3, "schedule": "constant"}}
    config = gguf_config(gtype, init_from=str(folder), trainable=trainable, train=train)
    result, train = distill(model, None, config, tmp_path / "run", sequences=sequences)
    assert result.method == "qat" and result.grid == GGUFBlockGrid(gtype) and not result.grid_overrides
    losses = train.losses()
    if trainable == "scales":  # E2E: the scales alone fit the teacher better at once
        assert sum(losses[-2:]) / 2 < losses[0]
    else:  # the chain from a Q4_K start already at a loss of 0.003 only has to stay there, batch noise aside
        assert max(losses) < 3 * losses[0]
    moved = 0
    for name, q in result.weights.items():
        assert q.grid == GGUFBlockGrid(gtype)
        assert_on_the_format(q)
        assert_encodes_exactly(q)
        # the folded model computes the exported weight
        assert torch.equal(model.get_submodule(name).weight.detach(), q.dequantize())
        if trainable == "scales":
            assert torch.equal(q.codes, ptq.weights[name].codes), name
        moved += int(not torch.equal(q.scale, ptq.weights[name].scale))
        if GGUF_BLOCK_TYPES[gtype].super_block:  # the sub-block integers are the start's
            per_super = 256 // q.grid.group
            code = q.grid.format.sub_scale
            _, start_sc, _ = sub_block_factors(ptq.weights[name].scale.reshape(-1, per_super), code)
            _, sc, _ = sub_block_factors(q.scale.reshape(-1, per_super), code)
            assert torch.equal(sc, start_sc), name
    assert moved == len(result.weights)  # every linear's d trained
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, tokenizer=tiny_tokenizer())
    assert report.max_abs_error == 0.0 and report.type_counts()[gtype.upper()] == 7
    tensors = {t.name: t for t in GGUFReader(tmp_path / "m.gguf").tensors}
    down = tensors["blk.0.ffn_down.weight"]
    np.testing.assert_array_equal(decode_tensor(np.asarray(down.data), down.tensor_type).reshape(256, 512),
                                  result.weights["model.layers.0.mlp.down_proj"].dequantize().numpy())


def test_a_start_with_llama_cpps_fallback_types_trains_each_linear_on_its_own_type(tmp_path):
    folder, ptq = ptq_folder(tmp_path, "q2_k", intermediate=288)  # down_proj: 288 inputs, on Q4_0
    assert ptq.grid_overrides == {"model.layers.0.mlp.down_proj": GGUFBlockGrid("q4_0")}
    model = wide_llama(288)
    config = gguf_config("q2_k", init_from=str(folder), trainable="scales")
    sequences = torch.randint(0, 500, (8, 16), generator=torch.Generator().manual_seed(0))
    result, _ = distill(model, None, config, tmp_path / "run", sequences=sequences)
    assert result.grid == GGUFBlockGrid("q2_k") and result.grid_overrides == ptq.grid_overrides
    assert result.describe_grids() == "mixed gguf:q2_k×6, gguf:q4_0×1"
    for name, q in result.weights.items():
        assert torch.equal(q.codes, ptq.weights[name].codes)
        assert_encodes_exactly(q)
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, tokenizer=tiny_tokenizer())
    assert report.tensor_types["blk.0.ffn_down.weight"] == "Q4_0"
    assert report.max_abs_error == 0.0


def test_qat_from_float_on_a_gguf_grid_starts_at_round_to_nearest():
    from tritium.quant import quantize_weight

    model = wide_llama()
    float_weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("proj")}
    students = prepare_student(model, gguf_config("q4_k"))
    for name, module in students.items():
        rtn = quantize_weight(float_weights[name], GGUFBlockGrid("q4_k"))
        q = module.to_quantized()
        assert torch.equal(q.codes, rtn.codes) and torch.equal(q.scale, rtn.scale) and torch.equal(q.shift, rtn.shift)


def test_a_mixed_precision_start_is_refused_before_training(tmp_path):
    model = tiny_model("llama", seed=0)
    calibration = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    result = quantize_(model, config_from_dict("rtn", {"kind": "uniform", "bits": 2, "group": 32},
                                               bits_budget=3.0), calibration)
    assert result.grid_overrides
    folder = tmp_path / "mixed"
    save_fake_quantized(model, tiny_tokenizer(), folder, result.method, grid_to_dict(result.grid), (),
                        result.method_args, weights=result.weights, grid_overrides=result.grid_overrides_dict())
    with pytest.raises(QuantConfigError, match=r"puts \d+ linears on other grids than W2g32.*trains every linear on "
                                               "one grid"):
        DistillConfig(grid=result.grid, init_from=str(folder), trainable="scales")


def test_cli_distill_from_a_packed_gguf_run_and_export(tmp_path, capsys):
    float_folder = tmp_path / "tiny"
    wide_llama().save_pretrained(float_folder)
    tiny_tokenizer().save_pretrained(float_folder)
    (tmp_path / "train.txt").write_text(TEXT)
    (tmp_path / "eval.txt").write_text(TEXT)
    common = ["--eval", str(tmp_path / "eval.txt"), "--seqlen", "32", "--no-progress", "--no-float"]
    ptq = tmp_path / "ptq"  # saved packed, the default
    assert main(["quantize", "--model", str(float_folder), "--method", "rtn", "--grid", "gguf:q4_k", *common,
                 "--out", str(ptq)]) == 0
    # --lr-quant: on a GGUF grid d trains in the log; two steps of the recipe's warm-up at its 5e-4 would not
    # move it by one fp16 step
    distill_args = ["distill", "--model", str(float_folder), "--recipe", "qat-w2g128-cpu", "--steps", "2",
                    "--lr-quant", "0.05",
                    "--data", str(tmp_path / "train.txt"), "--train-seqlen", "16", "--micro-batch-size", "2",
                    "--init-from", str(ptq), *common]
    capsys.readouterr()
    assert main([*distill_args, "--train", "scales", "--out", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert "quantized on gguf:q4_k" in err and "pass --grid gguf:q4_k" in err and "loading" not in err
    for trainable in ("scales", "all"):
        out = tmp_path / f"e2e-{trainable}"
        assert main([*distill_args, "--grid", "gguf:q4_k", "--train", trainable, "--out", str(out)]) == 0
        row = json.loads((out / "results.json").read_text())["rows"][-1]
        assert row["method"] == "qat" and row["grid"] == "gguf:q4_k"
        before, after = start_codes(str(ptq / "model")), start_codes(str(out / "model"))
        if trainable == "scales":
            assert all(torch.equal(before[n][0], after[n][0]) for n in before)
        assert any(not torch.equal(before[n][1], after[n][1]) for n in before)  # d moved
        capsys.readouterr()
        assert main(["export", str(out), "--format", "gguf", "--out", str(out / "m.gguf")]) == 0
        printed = capsys.readouterr().out
        assert "read-back max error 0" in printed and "Q4_K 7" in printed
