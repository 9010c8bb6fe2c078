import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from tritium.models.spectra import SpectraConfigError
from tritium.train.pretrain import (
    PretrainConfig,
    flops_per_token,
    load_pretrain_recipe,
    pretrain,
    pretrain_config,
    spectra_lr_lambda,
    total_steps_for,
    weight_decay_lambda,
)
from tritium.train.trainer import OptimConfig

VOCAB = 300


def _data(n=24, seqlen=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable stream: a repeating pattern with noise, so the loss can fall within a few steps
    base = torch.arange(n * seqlen) % 17
    noise = torch.randint(0, VOCAB, (n * seqlen,), generator=g)
    stream = torch.where(torch.rand(n * seqlen, generator=g) < 0.8, base, noise)
    return stream.view(n, seqlen), torch.randint(0, VOCAB, (4 * seqlen,), generator=g)


def _config(arch="trilm", **train):
    settings = dict(steps=8, micro_batch_size=2, progress=False, checkpoint_every=2, seed=3)
    settings.update(train)
    return pretrain_config(arch, "tiny-xs", seqlen=32, warmup_fraction=0.25, train=settings)


def test_the_spectra_schedule_halves_the_peak_and_drops_weight_decay_at_the_configured_fractions():
    optim = OptimConfig(lr=1.0, schedule="linear", warmup_steps=0, min_lr_ratio=0.0)
    lr = spectra_lr_lambda(100, optim, drop_at=0.5, drop_factor=0.5)
    assert lr(49) == pytest.approx(1 - 49 / 100)
    assert lr(50) == pytest.approx(0.5 * (1 - 50 / 100))  # the drop happens at step 50, not before
    assert lr(49) / lr(50) > 1.9
    wd = weight_decay_lambda(90, off_at=2 / 3)
    assert [wd(s) for s in (0, 59, 60, 89)] == [1.0, 1.0, 0.0, 0.0]
    assert weight_decay_lambda(90, off_at=None)(89) == 1.0


def test_a_trilm_run_follows_the_schedule_it_was_given(tmp_path):
    sequences, val = _data()
    config = PretrainConfig(
        arch="trilm", size="tiny-xs", seqlen=32, lr=0.01, warmup_fraction=0.0, min_lr_ratio=0.0, lr_drop_at=0.25,
        weight_decay=0.1, weight_decay_off_at=0.5, train=dict(steps=8, micro_batch_size=2, progress=False))
    result = pretrain(config, sequences, tmp_path, VOCAB, val_tokens=val)
    lrs = [r["lr"]["float"] for r in result.train.records]
    wds = [r["weight_decay"] for r in result.train.records]
    assert lrs[:2] == pytest.approx([0.01, 0.01 * 7 / 8])
    assert lrs[2] == pytest.approx(0.5 * 0.01 * 6 / 8)  # step 2 = 0.25 · 8: the peak is halved from here
    assert wds == [0.1] * 4 + [0.0] * 4  # removed from step 4 = 0.5 · 8
    summary = json.loads((tmp_path / "pretrain.json").read_text())
    assert summary["arch"] == "trilm" and summary["tokens"] == 8 * 2 * 32
    assert summary["val_loss"] == pytest.approx(result.val_loss) and 0 < summary["mfu"] < 1
    assert all(0 < r["mfu"] < 1 and r["tokens_per_second"] > 0 for r in result.train.records)  # in the log
    # a FloatLM gets the cosine schedule and keeps its weight decay
    float_run = pretrain(_config("float", steps=4), sequences, tmp_path / "float", VOCAB)
    assert all(r["weight_decay"] == 0.1 for r in float_run.train.records)


def test_the_shipped_trilm_recipe_halves_the_rate_at_half_and_drops_weight_decay_at_two_thirds(tmp_path):
    sequences, _ = _data()
    config = pretrain_config("trilm", "tiny-xs", seqlen=32, train=dict(steps=6, micro_batch_size=2, progress=False))
    betas = []
    result = pretrain(config, sequences, tmp_path, VOCAB,
                      callbacks=[lambda trainer, record: betas.append(trainer.optimizer.param_groups[0]["betas"])])
    # the recipe's warmup (5% of 6 steps) rounds to none: linear decay from the peak, halved from step 3 = 6 / 2
    ratio = config.min_lr_ratio
    expected = [config.peak_lr * (ratio + (1 - ratio) * (1 - s / 6)) * (config.lr_drop_factor if s >= 3 else 1)
                for s in range(6)]
    assert [r["lr"]["float"] for r in result.train.records] == pytest.approx(expected)
    # removed from step 4 = 2/3 · 6 exactly (a recipe value of 0.6667 would have kept it one step longer)
    assert [r["weight_decay"] for r in result.train.records] == [0.1] * 4 + [0.0] * 2
    assert set(betas) == {(0.9, 0.95)}  # AdamW's β as the recipe sets them
    # the log on disk, not only the in-memory records, carries throughput and MFU at every step
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(logged) == 6 and all(r["tokens_per_second"] > 0 and 0 < r["mfu"] < 1 for r in logged)


def test_training_lowers_the_loss_and_saves_a_plain_llama(tmp_path):
    sequences, val = _data()
    result = pretrain(_config(steps=12, micro_batch_size=4), sequences, tmp_path, VOCAB, val_tokens=val)
    losses = result.train.losses()
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    model = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.tritium_spectra["arch"] == "trilm"
    assert math.isfinite(result.val_loss)


class _Killed(Exception):
    pass


def test_a_killed_pretraining_run_resumes_exactly(tmp_path):
    sequences, val = _data()
    full = pretrain(_config(), sequences, tmp_path / "full", VOCAB, val_tokens=val)

    def kill_at_7(trainer, record):
        if record["step"] == 7:  # past the lr drop (4) and the weight-decay removal (6); last checkpoint: 6
            raise _Killed

    with pytest.raises(_Killed):
        pretrain(_config(), sequences, tmp_path / "killed", VOCAB, val_tokens=val, callbacks=[kill_at_7])
    resumed = pretrain(_config(), sequences, tmp_path / "killed", VOCAB, val_tokens=val)
    assert resumed.train.resumed_from == 6
    assert resumed.train.losses() == full.train.losses()
    assert resumed.val_loss == full.val_loss
    a = torch.load(tmp_path / "full/checkpoints/step-00000008/model.pt")
    b = torch.load(tmp_path / "killed/checkpoints/step-00000008/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_inputs_fail_clearly(tmp_path):
    sequences, _ = _data()
    with pytest.raises(SpectraConfigError, match="vocabulary"):
        pretrain(_config(), sequences, tmp_path, vocab_size=10)
    with pytest.raises(SpectraConfigError, match=r"\[n, 32\]"):
        pretrain(_config(), sequences[:, :16], tmp_path, VOCAB)
    with pytest.raises(SpectraConfigError, match="size"):
        PretrainConfig(size="7b")
    with pytest.raises(SpectraConfigError, match="fraction"):
        PretrainConfig(lr_drop_at=1.5)
    with pytest.raises(SpectraConfigError, match="such as 0.5 or 2/3, got 'two thirds'"):
        PretrainConfig(weight_decay_off_at="two thirds")
    with pytest.raises(SpectraConfigError, match="in \\[0, 1\\], got '3/1'"):
        PretrainConfig(weight_decay_off_at="3/1")
    with pytest.raises(SpectraConfigError, match="betas"):
        PretrainConfig(betas=(0.9, 1.5))
    with pytest.raises(SpectraConfigError, match="no learning rate for size 'tiny-xs'"):
        pretrain(PretrainConfig(size="tiny-xs", seqlen=32, train=dict(steps=1)), sequences, tmp_path, VOCAB)
    with pytest.raises(SpectraConfigError, match="not found"):
        load_pretrain_recipe("spectra-nothing")


def test_the_shipped_recipes_carry_spectras_schedules_and_per_size_rates():
    trilm = pretrain_config("trilm", "99m", train=dict(steps=10))
    floatlm = pretrain_config("float", "99m", train=dict(steps=10))
    assert trilm.effective_schedule == "spectra" and floatlm.effective_schedule == "cosine"
    assert trilm.lr_drop_at == 0.5 and trilm.weight_decay_off_at == 2 / 3  # "2/3" in the YAML, read exactly
    assert floatlm.weight_decay_off_at is None
    assert trilm.optim(10).betas == floatlm.optim(10).betas == (0.9, 0.95)  # AdamW as Spectra sets it
    assert trilm.peak_lr > 2 * floatlm.peak_lr  # TriLM trains at a higher rate
    assert pretrain_config("trilm", "3.9b", train=dict(steps=1)).peak_lr < trilm.peak_lr  # falling with size
    assert pretrain_config("trilm", "99m", lr=1e-3, train=dict(steps=1)).peak_lr == 1e-3  # a flag wins


def test_every_pretraining_recipe_ships_in_the_package():
    """`tritium pretrain` falls back on spectra-<arch>.yaml: a wheel without the folder fails at once."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tritium"]
    package = root / "src" / "tritium"
    packaged = {path for pattern in patterns for path in package.glob(pattern)}
    recipes = set((package / "recipes" / "pretrain").glob("*.yaml"))
    assert recipes and recipes <= packaged, sorted(p.name for p in recipes - packaged)


def test_a_token_budget_is_shared_by_every_process():
    config = pretrain_config("trilm", "tiny-xs", seqlen=32, train=dict(tokens=6400, micro_batch_size=2))
    assert total_steps_for(config, world=1) == 100 and total_steps_for(config, world=2) == 50
    with pytest.raises(SpectraConfigError, match="less than one step"):
        total_steps_for(pretrain_config("trilm", "tiny-xs", seqlen=32, train=dict(tokens=10)))


def test_flops_per_token_counts_matrices_and_attention():
    from tritium.models.spectra import build_model

    model = build_model("float", "tiny-xs", VOCAB, context=32)
    linear = 2 * (4 * 64 * 64 + 3 * 64 * 160)
    assert flops_per_token(model, 32) == 6 * (linear + VOCAB * 64) + 12 * 2 * 64 * 32
