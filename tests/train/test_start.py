"""Starting a student from a PTQ result (the QAT chain), and end-to-end scale tuning (E2E-QP)."""

import json

import pytest
import torch

from tritium.cli import main
from tritium.export.hf import save_fake_quantized
from tritium.models import load_model, tiny_model, tiny_tokenizer
from tritium.quant.grids import QuantConfigError, grid_from_dict, grid_to_dict
from tritium.recipes import load_recipe
from tritium.runner import quantize_model
from tritium.train.distill import DistillConfig, distill, prepare_student
from tritium.train.dlt import DLTLinear, dlt_codes, to_fake_quant_
from tritium.train.flips import CodeFlipTracker, CodeTrackingError
from tritium.train.start import start_codes

TEXT = " ".join(f"The quick brown fox number {i} jumps over the lazy dog." for i in range(200))
W2_RAGGED = {"kind": "uniform", "bits": 2, "group": 48, "symmetric": False, "ragged_groups": True}
W3_SYM = {"kind": "uniform", "bits": 3, "group": 32, "symmetric": True}
DLT32 = {"kind": "ternary", "variant": "dlt", "group": 32}


def _ptq_folder(tmp_path, arch, grid, method="rtn", seed=0):
    """A fake-quant folder as `tritium quantize` saves it (weights, config, codes sidecar)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch, seed=seed)
    recipe = load_recipe(None) | {"method": method, "grid": dict(grid)}
    recipe["calib"] = {"source": "unused", "samples": 2, "seqlen": 32, "seed": 0}
    if method != "rtn":
        calibration = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(0))
        from tritium.methods import config_from_dict, quantize_

        config = config_from_dict(method, grid)
        result = quantize_(model, config, calibration)
    else:
        result, config = quantize_model(model, tokenizer, recipe)
    folder = tmp_path / f"ptq-{arch}-{method}"
    save_fake_quantized(model, tokenizer, folder, result.method, grid_to_dict(result.grid), config.skip,
                        result.method_args, weights=result.weights)
    return folder, result


def _config(grid, **overrides):
    base = dict(grid=grid_from_dict(grid), loss={"off_weight": 1.0, "kl_weight": 1.0},
                train={"steps": 8, "micro_batch_size": 4, "progress": False,
                       "optim": {"lr": 1e-3, "lr_quant": 1e-3, "schedule": "constant"}})
    return DistillConfig(**(base | overrides))


@pytest.mark.parametrize("arch, grid, method", [("llama", W2_RAGGED, "gptq"), ("llama", W3_SYM, "rtn"),
                                                ("qwen2", DLT32, "gptq"), ("gemma", W2_RAGGED, "rtn")])
def test_step_zero_is_exactly_the_ptq_model(tmp_path, arch, grid, method):
    folder, ptq = _ptq_folder(tmp_path, arch, grid, method)
    reference, _, _ = load_model(folder)
    config = _config(grid, init_from=str(folder))
    student = tiny_model(arch, seed=0)  # the float model distill would start from
    students = prepare_student(student, config, config.start_source())
    assert_student_is_the_ptq_model(student, students, reference, ptq)


def assert_student_is_the_ptq_model(student, students, reference, ptq):
    """The student's logits are the PTQ folder's, and each linear's codes and scales are the PTQ result's."""
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, reference(ids).logits, rtol=1e-6, atol=1e-6)
    for name, module in students.items():
        q = module.to_quantized()
        assert torch.equal(q.codes.to(torch.int16), ptq.weights[name].codes.to(torch.int16)), name
        assert torch.equal(q.scale, ptq.weights[name].scale), name
        assert torch.equal(q.dequantize(), module.quantized_weight().detach()), name


def test_ptq_start_latents_sit_inside_their_cells(tmp_path):
    """Away from the rounding threshold and inside the STE clip, where a copied dequantized weight is not."""
    folder, _ = _ptq_folder(tmp_path, "llama", DLT32, "gptq")
    config = _config(DLT32, init_from=str(folder))
    students = prepare_student(tiny_model("llama", seed=0), config, config.start_source())
    for module in students.values():
        assert isinstance(module, DLTLinear)
        w, shift, alpha = module.weight.detach(), module.shift.detach(), module.alpha.detach()
        centered = (w - module.layout.expand(shift)).abs()
        delta = 0.7 * module.layout.expand(module.layout.reduce(centered, lambda g: g.mean(-1)))
        nonzero = dlt_codes(w, shift, module.layout) != 0
        a = module.layout.expand(alpha)
        assert bool((centered[nonzero] < a[nonzero]).all())  # strictly inside the clip: gradients pass
        assert bool((centered[nonzero] - delta[nonzero] > 0.1 * a[nonzero]).all())
        assert bool((delta[~nonzero] - centered[~nonzero] > 0.1 * a[~nonzero]).all())


@pytest.mark.parametrize("grid", [W2_RAGGED, DLT32])
def test_step_zero_is_the_packed_ptq_model(tmp_path, grid):
    # `tritium quantize` saves packed folders by default: a chain starts from one as from a fake-quant folder.
    from tritium.export.hf import save_packed
    from tritium.nn import pack_model

    fake_folder, ptq = _ptq_folder(tmp_path, "llama", grid)
    model, tokenizer, _ = load_model(fake_folder)
    pack_model(model, ptq.weights)
    folder = tmp_path / "packed"
    save_packed(model, tokenizer, folder, ptq.method, grid_to_dict(ptq.grid), (), ptq.method_args,
                float_dtype="float32")
    reference, _, _ = load_model(folder)
    config = _config(grid, init_from=str(folder))
    student = tiny_model("llama", seed=0)
    students = prepare_student(student, config, config.start_source())
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
    for name, module in students.items():
        q = module.to_quantized()
        assert torch.equal(q.codes.to(torch.int16), ptq.weights[name].codes.to(torch.int16)), name
        # the packed folder stores fp16 scales: the student starts from exactly those
        assert torch.equal(q.scale, ptq.weights[name].scale.half().float()), name


def test_a_start_on_another_grid_fails_before_any_work(tmp_path):
    folder, _ = _ptq_folder(tmp_path, "llama", W2_RAGGED)
    with pytest.raises(QuantConfigError, match=r"quantized on W2g48.*trains on ternary-dltg32"):
        _config(DLT32, init_from=str(folder))
    with pytest.raises(QuantConfigError, match=r"quantized on W2g48.*trains on W3g48"):
        _config({**W2_RAGGED, "bits": 3}, init_from=str(folder))
    with pytest.raises(QuantConfigError, match="init_from .*holds no config.json"):
        _config(W2_RAGGED, init_from=str(tmp_path))
    (folder / "tritium_codes.safetensors").unlink()
    with pytest.raises(QuantConfigError, match="holds no tritium_codes.safetensors"):
        _config(W2_RAGGED, init_from=str(folder))


def test_training_only_scales_needs_a_quantized_start(tmp_path):
    with pytest.raises(QuantConfigError, match="needs codes to keep"):
        _config(W2_RAGGED, trainable="scales")
    with pytest.raises(QuantConfigError, match="trainable='weights' is unknown"):
        _config(W2_RAGGED, trainable="weights")
    float_folder = tmp_path / "float"
    tiny_model("llama").save_pretrained(float_folder)
    with pytest.raises(QuantConfigError, match="is a float model"):
        _config(W2_RAGGED, trainable="scales", init_from=str(float_folder))
    with pytest.raises(QuantConfigError, match="plain-STE student"):
        _config({"kind": "ternary", "variant": "twn", "group": 32}, trainable="scales",
                init_from=str(float_folder))


@pytest.mark.parametrize("grid", [W2_RAGGED, DLT32])
def test_scale_tuning_keeps_the_codes_and_lowers_the_loss(tmp_path, grid):
    folder, ptq = _ptq_folder(tmp_path, "llama", grid, "gptq")
    model = tiny_model("llama", seed=0)
    seqs = torch.randint(0, 500, (8, 16), generator=torch.Generator().manual_seed(0))
    config = _config(grid, init_from=str(folder), trainable="scales",
                     train={"steps": 12, "micro_batch_size": 4, "progress": False,
                            "optim": {"lr": 1e-3, "lr_quant": 3e-3, "schedule": "constant"}})
    result, train = distill(model, None, config, tmp_path / "run", sequences=seqs)
    losses = train.losses()
    assert sum(losses[-3:]) / 3 < 0.95 * losses[0]
    changed = 0
    for name, q in result.weights.items():
        assert torch.equal(q.codes.to(torch.int16), ptq.weights[name].codes.to(torch.int16)), name
        changed += int(not torch.equal(q.scale, ptq.weights[name].scale))
    assert changed == len(result.weights)
    # nothing but the quantizer parameters trained: the biases and the float parts are the start's
    start, _, _ = load_model(folder)
    assert torch.equal(model.model.norm.weight, start.model.norm.weight)


def test_cli_chain_and_scale_tuning(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    float_folder = tmp_path / "tiny"
    tiny_model("llama", seed=0).save_pretrained(float_folder)
    tokenizer.save_pretrained(float_folder)
    (tmp_path / "train.txt").write_text(TEXT)
    (tmp_path / "eval.txt").write_text(TEXT)
    ptq_run = tmp_path / "ptq"
    common = ["--eval", str(tmp_path / "eval.txt"), "--seqlen", "32", "--no-progress"]
    assert main(["quantize", "--model", str(float_folder), "--recipe", "w2g128-rtn", "--group", "48",
                 "--ragged-groups", "--no-float", "--out", str(ptq_run), *common]) == 0
    distill_args = ["distill", "--model", str(float_folder), "--recipe", "qat-w2g128-cpu", "--group", "48",
                    "--steps", "2", "--data", str(tmp_path / "train.txt"), "--train-seqlen", "16",
                    "--micro-batch-size", "2", *common]
    out = tmp_path / "e2e"
    assert main([*distill_args, "--init-from", str(ptq_run / "model"), "--train", "scales", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["recipe"]["method_args"]["trainable"] == "scales" and report["training"]["steps"] == 2
    assert report["rows"][1]["method"] == "qat" and report["rows"][1]["grid"] == "W2g48"
    before, after = start_codes(str(ptq_run / "model")), start_codes(str(out / "model"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n][0], after[n][0]) for n in before)  # the codes are the PTQ codes
    assert any(not torch.equal(before[n][1], after[n][1]) for n in before)  # the scales moved
    # distill saves packed codes by default, as quantize does, with the float parts in fp16
    assert json.loads((out / "model" / "config.json").read_text())["quantization_config"]["format"] == "packed"
    from safetensors import safe_open

    with safe_open(str(out / "model" / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F16"
    # with --format fake the tuned folder packs exactly: its export is what it trained
    fake = tmp_path / "e2e-fake"
    assert main([*distill_args, "--init-from", str(ptq_run / "model"), "--train", "scales", "--out", str(fake),
                 "--format", "fake"]) == 0
    assert main(["pack", str(fake), "--float-dtype", "float32"]) == 0
    packed, _, _ = load_model(fake / "packed")
    tuned, _, _ = load_model(fake / "model")
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).logits, tuned(ids).logits, rtol=1e-4, atol=1e-4)
    capsys.readouterr()

    # the run folder works as well as its model folder; a ternary recipe names both grids and stops early
    assert main([*distill_args[:4], "ternaryllm-cpu", *distill_args[5:], "--init-from", str(ptq_run),
                 "--out", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert "quantized on W2g48" in err and "ternary-dltg48" in err
    assert "loading" not in err and not (tmp_path / "wrong").exists()  # before the model loads or evaluates
    assert main([*distill_args, "--train", "scales", "--out", str(tmp_path / "noinit")]) == 2
    assert "needs codes to keep" in capsys.readouterr().err
    assert main([*distill_args, "--bits", "3", "--init-from", str(ptq_run), "--out", str(tmp_path / "w3")]) == 2
    err = capsys.readouterr().err
    assert "quantized on W2g48" in err and "trains on W3g48" in err
    assert main([*distill_args[:4], "ternaryllm-cpu", *distill_args[5:], "--bits", "4"]) == 2
    assert "--bits applies to a uniform grid" in capsys.readouterr().err


def _rotated_ptq_folder(tmp_path, grid):
    """A rotated PTQ result of a tied tiny Llama, as `tritium quantize --rotate` saves it."""
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", seed=0, tie_word_embeddings=True)
    recipe = load_recipe(None) | {"method": "rtn", "grid": dict(grid), "rotate": True}
    result, config = quantize_model(model, tokenizer, recipe)
    folder = tmp_path / "ptq-rotated"
    save_fake_quantized(model, tokenizer, folder, result.method, grid_to_dict(result.grid), config.skip,
                        result.method_args, weights=result.weights)
    return folder


def test_a_rotated_start_rotates_the_student_and_its_teacher(tmp_path):
    import copy

    from tritium.models.rotation import RotationSettings, match_rotation_

    folder = _rotated_ptq_folder(tmp_path, W3_SYM)
    reference, _, _ = load_model(folder)
    config = _config(W3_SYM, init_from=str(folder))
    start = config.start_source()
    assert start.rotation == RotationSettings()
    float_model = tiny_model("llama", seed=0, tie_word_embeddings=True)
    student = copy.deepcopy(float_model)
    prepare_student(student, config, start)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
        # The teacher distill copies is rotated alike: its hidden states share the student's basis,
        # which OFF's cosine needs, and its logits are the float model's.
        teacher = copy.deepcopy(float_model)
        assert match_rotation_(teacher, start.rotation)
        torch.testing.assert_close(teacher(ids).logits, float_model(ids).logits, rtol=1e-4, atol=1e-4)
        last = lambda m: m(ids, output_hidden_states=True).hidden_states[-2].flatten(0, 1)  # noqa: E731
        aligned = torch.cosine_similarity(last(student), last(teacher), dim=-1).mean()
        unaligned = torch.cosine_similarity(last(student), last(float_model), dim=-1).mean()
        assert aligned > 0.9 > unaligned + 0.3, (aligned, unaligned)


def test_distill_from_a_rotated_start_trains(tmp_path):
    folder = _rotated_ptq_folder(tmp_path, W3_SYM)
    config = _config(W3_SYM, init_from=str(folder), train={"steps": 3, "micro_batch_size": 2, "progress": False,
                                                             "optim": {"lr": 1e-3, "lr_quant": 1e-3,
                                                                       "schedule": "constant"}})
    model = tiny_model("llama", seed=0, tie_word_embeddings=True)
    seqs = torch.randint(0, 500, (8, 24), generator=torch.Generator().manual_seed(0))
    result, train = distill(model, None, config, tmp_path / "run", sequences=seqs)
    assert model.config.tritium_rotation == {"seed": 0, "kind": "hadamard", "heads": True}
    assert train.losses() and all(torch.isfinite(torch.tensor(train.losses())))


@pytest.mark.parametrize("arch, grid, method", [("llama", W2_RAGGED, "gptq"), ("qwen2", DLT32, "gptq"),
                                                ("gemma", DLT32, "rtn"), ("llama", W3_SYM, "rtn")])
def test_float_start_latents_keep_the_ptq_model_and_the_float_positions(tmp_path, arch, grid, method):
    folder, ptq = _ptq_folder(tmp_path, arch, grid, method)
    reference, _, _ = load_model(folder)
    centre = prepare_student(tiny_model(arch, seed=0), _config(grid, init_from=str(folder)),
                             _config(grid, init_from=str(folder)).start_source())
    config = _config(grid, init_from=str(folder), start_latents="float")
    student = tiny_model(arch, seed=0)
    floats = {name: m.weight.detach().clone() for name, m in student.named_modules() if name in centre}
    students = prepare_student(student, config, config.start_source())
    assert_student_is_the_ptq_model(student, students, reference, ptq)
    for name, module in students.items():
        w = module.weight.detach()
        # nearer the float weights than the cell centres, and some exactly at them (inside their cells)
        assert (w - floats[name]).norm() < (centre[name].weight.detach() - floats[name]).norm(), name
        assert (w == floats[name]).float().mean() > 0.2, name
        if isinstance(module, DLTLinear):  # inside the STE clip, so every latent gets a gradient
            centered = (w - module.layout.expand(module.shift.detach())).abs()
            assert bool((centered <= module.layout.expand(module.alpha.detach()) + 1e-6).all()), name


def test_float_start_latents_need_a_start_whose_codes_train(tmp_path):
    with pytest.raises(QuantConfigError, match="init_from"):
        _config(DLT32, start_latents="float")
    folder, _ = _ptq_folder(tmp_path, "llama", DLT32)
    with pytest.raises(QuantConfigError, match="trainable"):
        _config(DLT32, init_from=str(folder), start_latents="float", trainable="scales")
    with pytest.raises(QuantConfigError, match="unknown"):
        _config(DLT32, init_from=str(folder), start_latents="middle")
    floats = tmp_path / "float-start"  # a float model has no cells to keep the latents in
    tiny_model("llama", seed=0).save_pretrained(floats)
    tiny_tokenizer().save_pretrained(floats)
    with pytest.raises(QuantConfigError, match="is a float model"):
        _config(DLT32, init_from=str(floats), start_latents="float")
    twn = {"kind": "ternary", "variant": "twn", "group": 32}
    with pytest.raises(QuantConfigError, match="plain straight-through"):
        _config(twn, init_from=str(floats), start_latents="float")


# ---------------------------------------------------------------- the chain's code diagnostics (train/flips.py)


def _codes_by_name(result):
    return {name: q.codes.to(torch.int16) for name, q in result.weights.items()}


@pytest.mark.parametrize("grid", [W2_RAGGED, DLT32])
def test_the_log_counts_the_codes_that_flip_and_moved(tmp_path, grid):
    folder, ptq = _ptq_folder(tmp_path, "llama", grid, "gptq")
    seqs = torch.randint(0, 500, (8, 16), generator=torch.Generator().manual_seed(0))
    # a latent lr large enough that codes flip within a few steps
    config = _config(grid, init_from=str(folder), track_code_flips=True,
                     train={"steps": 6, "micro_batch_size": 4, "progress": False,
                            "optim": {"lr": 3e-2, "lr_quant": 1e-3, "schedule": "constant"}})
    result, train = distill(tiny_model("llama", seed=0), None, config, tmp_path / "run", sequences=seqs)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    # the last record's codes_moved is the fraction of the final codes that differ from the PTQ start's
    start, final = _codes_by_name(ptq), _codes_by_name(result)
    total = sum(c.numel() for c in start.values())
    moved = sum(int((final[n] != start[n]).sum()) for n in start) / total
    assert moved > 0
    assert log[-1]["codes_moved"] == pytest.approx(moved)
    assert all(0 <= r["code_flips"] <= 1 for r in log) and sum(r["code_flips"] for r in log) >= moved


def test_frozen_codes_never_flip(tmp_path):
    folder, _ = _ptq_folder(tmp_path, "llama", W2_RAGGED, "rtn")
    seqs = torch.randint(0, 500, (8, 16), generator=torch.Generator().manual_seed(0))
    config = _config(W2_RAGGED, init_from=str(folder), trainable="scales", track_code_flips=True)
    distill(tiny_model("llama", seed=0), None, config, tmp_path / "run", sequences=seqs)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["code_flips"] == 0 and r["codes_moved"] == 0 for r in log)


def test_a_straight_through_student_has_no_codes_to_track():
    with pytest.raises(QuantConfigError, match="track_code_flips"):
        _config({"kind": "ternary", "variant": "twn", "group": 32}, track_code_flips=True)
    with pytest.raises(QuantConfigError, match="true or false"):
        _config(W2_RAGGED, track_code_flips="yes")
    model = tiny_model("llama", seed=0)
    students = to_fake_quant_(model, grid_from_dict({"kind": "ternary", "variant": "twn", "group": 32}))
    with pytest.raises(CodeTrackingError, match="no"):
        CodeFlipTracker(students)


# ---------------------------------------------------------------- ParetoQ's threshold (ternary_threshold: seq)


def test_seq_codes_round_to_the_nearest_level():
    from tritium.quant.grids import GroupLayout

    layout = GroupLayout.for_weight((4, 64), 32)
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    alpha = torch.rand(layout.scale_shape, generator=torch.Generator().manual_seed(1)) + 0.2
    shift = 0.1 * torch.randn(layout.scale_shape, generator=torch.Generator().manual_seed(2))
    expected = torch.clamp(torch.round((w - layout.expand(shift)) / layout.expand(alpha)), -1, 1).to(torch.int8)
    assert torch.equal(dlt_codes(w, shift, layout, alpha, "seq"), expected)
    # TWN's threshold does not depend on α
    assert torch.equal(dlt_codes(w, shift, layout, alpha, "twn"), dlt_codes(w, shift, layout, 5 * alpha, "twn"))


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_a_seq_chain_starts_exactly_at_the_ptq_model_with_latents_on_the_levels(tmp_path, arch):
    folder, ptq = _ptq_folder(tmp_path, arch, DLT32, "gptq")
    reference, _, _ = load_model(folder)
    config = _config(DLT32, init_from=str(folder), ternary_threshold="seq", ste_clip=1.5)
    student = tiny_model(arch, seed=0)
    students = prepare_student(student, config, config.start_source())
    assert_student_is_the_ptq_model(student, students, reference, ptq)
    for name, module in students.items():
        # with the stretched clip 1.5·α the midway start is the level itself, the centre of the ±1 cell
        torch.testing.assert_close(module.weight.detach(), module.quantized_weight().detach(), rtol=0, atol=1e-6)
    float_config = _config(DLT32, init_from=str(folder), ternary_threshold="seq", ste_clip=1.5, start_latents="float")
    student = tiny_model(arch, seed=0)
    assert_student_is_the_ptq_model(student, prepare_student(student, float_config, float_config.start_source()),
                                    reference, ptq)


def test_a_seq_student_trains_and_its_export_is_its_forward(tmp_path):
    seqs = torch.randint(0, 500, (8, 16), generator=torch.Generator().manual_seed(0))
    config = _config(DLT32, ternary_threshold="seq", ste_clip=1.5)
    model = tiny_model("llama", seed=0)
    result, train = distill(model, None, config, tmp_path / "run", sequences=seqs)
    losses = train.losses()
    assert all(torch.isfinite(torch.tensor(losses))) and min(losses[-3:]) < losses[0]
    assert result.weights  # the codes it saves, as the forward used them
    students = prepare_student(tiny_model("llama", seed=1), config, None)
    for module in students.values():
        assert module.threshold_rule == "seq"
        with torch.no_grad():  # latents anywhere, some α negative: the export still equals the forward
            module.weight.add_(0.05 * torch.randn_like(module.weight))
            module.alpha[0] *= -1
        torch.testing.assert_close(module.to_quantized().dequantize(), module.quantized_weight().detach(),
                                   rtol=0, atol=2e-3)


def test_seq_settings_that_cannot_work_are_refused():
    with pytest.raises(QuantConfigError, match="ste_clip above 0.5"):
        _config(DLT32, ternary_threshold="seq", ste_clip=0.4)
    with pytest.raises(QuantConfigError, match="unknown"):
        _config(DLT32, ternary_threshold="nearest")
    with pytest.raises(QuantConfigError, match="applies to ternary dlt grids"):
        _config(W2_RAGGED, ternary_threshold="seq")
