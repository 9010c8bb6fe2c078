import copy
import math

import pytest
import torch

from tritium.models import tiny_model
from tritium.train.data import TrainDataError
from tritium.train.dlt import DLTConfig, to_dlt_
from tritium.train.losses import DistillationLoss, LanguageModelLoss, LossConfig
from tritium.train.trainer import OptimConfig, TrainConfig, TrainConfigError, Trainer, lr_multiplier


def _student_and_loss(seed=0):
    teacher = tiny_model("llama", seed=seed, num_hidden_layers=2, hidden_size=32, intermediate_size=64)
    student = copy.deepcopy(teacher)
    to_dlt_(student, DLTConfig(group=16))
    return student, DistillationLoss(teacher, LossConfig(off_weight=1.0, kl_weight=1.0, ce_weight=0.1), student)


def _sequences(n=12, seqlen=16, seed=0):
    return torch.randint(0, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _config(**overrides):
    base = dict(steps=6, micro_batch_size=2, grad_accum=2, seed=1, progress=False, checkpoint_every=2,
                optim=OptimConfig(lr=3e-3, lr_quant=1e-3, warmup_steps=2, schedule="cosine"))
    return TrainConfig(**{**base, **overrides})


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_loss_curve(tmp_path):
    student, loss_fn = _student_and_loss()
    full = Trainer(student, loss_fn, _sequences(), _config(), tmp_path / "full").run()
    assert full.steps == 6 and len(full.losses()) == 6

    def kill_at_5(trainer, record):
        if record["step"] == 5:  # after step 5, before its checkpoint; the last checkpoint is step 4
            raise _Killed

    student, loss_fn = _student_and_loss()
    with pytest.raises(_Killed):
        Trainer(student, loss_fn, _sequences(), _config(), tmp_path / "killed", callbacks=[kill_at_5]).run()
    student, loss_fn = _student_and_loss()  # a fresh process would rebuild everything from scratch
    resumed = Trainer(student, loss_fn, _sequences(), _config(), tmp_path / "killed").run()
    assert resumed.resumed_from == 4
    assert resumed.losses() == full.losses()  # bit for bit, the log included
    assert [r["step"] for r in resumed.records] == list(range(1, 7))
    final_full = torch.load(tmp_path / "full/checkpoints/step-00000006/model.pt")
    final_resumed = torch.load(tmp_path / "killed/checkpoints/step-00000006/model.pt")
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    assert len(list((tmp_path / "killed/checkpoints").iterdir())) == 1  # keep_checkpoints=1


def test_training_lowers_the_loss_and_uses_two_learning_rates(tmp_path):
    student, loss_fn = _student_and_loss()
    seqs = _sequences(n=4)
    trainer = Trainer(student, loss_fn, seqs, _config(steps=25, grad_accum=1, checkpoint_every=0, eval_seqlen=16,
                                                      optim=OptimConfig(lr=5e-3, lr_quant=2e-3, schedule="constant")),
                      tmp_path, eval_ids=seqs.flatten()[None])
    result = trainer.run()
    losses = result.losses()
    assert losses[-1] < 0.7 * losses[0]
    assert result.records[0]["lr"]["latent"] == 5e-3 and result.records[0]["lr"]["quant"] == 2e-3
    assert math.isfinite(result.records[-1]["eval_ppl"]) and result.tokens == 25 * 2 * 16
    assert (tmp_path / "log.jsonl").read_text().count("\n") == len(result.records)


def test_schedule_warms_up_then_decays():
    optim = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    values = [lr_multiplier(s, 20, optim) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[3:], values[4:])) and values[-1] > 0.1
    assert lr_multiplier(20, 20, optim) == pytest.approx(0.1)
    linear = OptimConfig(lr=1.0, schedule="linear")
    assert lr_multiplier(5, 10, linear) == pytest.approx(0.5)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    runs = []
    for mb, accum in [(4, 1), (2, 2), (1, 4)]:
        model = tiny_model("llama", seed=2, hidden_size=32, intermediate_size=64)
        trainer = Trainer(model, LanguageModelLoss(), _sequences(), _config(steps=3, micro_batch_size=mb,
                          grad_accum=accum, checkpoint_every=0), tmp_path / f"{mb}")
        runs.append(trainer.run().losses())
    for other in runs[1:]:
        assert other == pytest.approx(runs[0], rel=1e-5)


def test_bad_settings_fail_clearly(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(TrainConfigError, match="budget"):
        TrainConfig()
    with pytest.raises(TrainConfigError, match="less than one step"):
        Trainer(model, LanguageModelLoss(), _sequences(), _config(steps=None, tokens=10), tmp_path)
    with pytest.raises(TrainDataError, match="context"):
        Trainer(model, LanguageModelLoss(), _sequences(seqlen=300), _config(), tmp_path)
    with pytest.raises(TrainConfigError, match="eval_seqlen"):
        Trainer(model, LanguageModelLoss(), _sequences(), _config(), tmp_path, eval_ids=_sequences().flatten())
    with pytest.raises(TrainConfigError, match="torchrun"):
        Trainer(model, LanguageModelLoss(), _sequences(), _config(distributed="ddp"), tmp_path)
    with pytest.raises(TrainConfigError, match="no option"):
        TrainConfig(steps=1, optim={"learning_rate": 1})
    with pytest.raises(TrainConfigError, match="schedule"):
        OptimConfig(schedule="step")


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    runs = []
    for checkpointing in (False, True):
        student, loss_fn = _student_and_loss()
        config = _config(steps=2, checkpoint_every=0, gradient_checkpointing=checkpointing)
        trainer = Trainer(student, loss_fn, _sequences(), config, tmp_path / str(checkpointing))
        assert student.is_activation_checkpointing == checkpointing  # it really recomputes
        runs.append(trainer.run().losses())
    assert runs[1] == pytest.approx(runs[0], rel=1e-5)


def test_a_cpu_run_says_when_its_precision_is_the_slow_choice(tmp_path, monkeypatch, capsys):
    import tritium.utils.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    student, loss = _student_and_loss()
    Trainer(student, loss, _sequences(), _config(steps=1, progress=True, checkpoint_every=0, precision="fp32"),
            tmp_path / "fp32").run()
    assert "--precision auto or bf16" in capsys.readouterr().err
    Trainer(student, loss, _sequences(), _config(steps=1, progress=True, checkpoint_every=0, precision="bf16"),
            tmp_path / "bf16").run()
    assert "tritium:" not in capsys.readouterr().err


@pytest.mark.parametrize("flags, bf16", [({"avx2", "avx512_bf16"}, True), ({"amx_bf16"}, True), ({"avx2", "fma"}, False)])
def test_auto_precision_takes_bf16_autocast_only_on_a_cpu_with_bf16_hardware(tmp_path, monkeypatch, flags, bf16):
    import tritium.utils.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    student, loss = _student_and_loss()
    trainer = Trainer(student, loss, _sequences(), _config(steps=1, checkpoint_every=0, device="cpu"), tmp_path)
    assert trainer.config.precision == "auto" and trainer.use_bf16 is bf16


def test_bf16_on_a_cpu_that_emulates_it_warns_when_the_trainer_is_made(tmp_path, monkeypatch):
    import tritium.utils.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(hardware, "_warned", set())
    student, loss = _student_and_loss()
    with pytest.warns(RuntimeWarning, match="avx512_bf16.*emulated"):
        trainer = Trainer(student, loss, _sequences(), _config(steps=1, checkpoint_every=0, precision="bf16",
                                                               device="cpu"), tmp_path)
    assert trainer.use_bf16  # asked for explicitly: warned, not overridden
