"""DDP (and FSDP) on 2 CPU processes with gloo give what one process computes on the same global batch."""

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tritium.models import tiny_model
from tritium.train.dlt import DLTConfig, to_dlt_
from tritium.train.losses import DistillationLoss, LossConfig
from tritium.train.trainer import OptimConfig, TrainConfig, Trainer

STEPS = 2


def _setup():
    teacher = tiny_model("llama", seed=4, hidden_size=32, intermediate_size=64)
    student = copy.deepcopy(teacher)
    to_dlt_(student, DLTConfig(group=16))
    return student, DistillationLoss(teacher, LossConfig(off_weight=1.0, kl_weight=1.0, ce_weight=0.1), student)


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP's DTensor shards, gathered


def _run(out_dir, micro_batch_size, distributed):
    student, loss_fn = _setup()
    grads = []

    def record_grads(trainer):  # the synchronised gradients, before clipping and the optimizer step
        grads.append({n: _full(p.grad.detach()).clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    seqs = torch.randint(0, 512, (8, 16), generator=torch.Generator().manual_seed(0))
    # fp32 stated: the spawned processes see the real CPU flags, and auto takes bf16 where the CPU has it
    config = TrainConfig(steps=STEPS, micro_batch_size=micro_batch_size, grad_accum=2, seed=3, progress=False,
                         distributed=distributed, optim=OptimConfig(lr=3e-3, lr_quant=1e-3), precision="fp32")
    result = Trainer(student, loss_fn, seqs, config, out_dir, after_backward=[record_grads]).run()
    return {"losses": result.losses(), "grads": grads,
            "params": {k: _full(v.detach()).clone() for k, v in student.state_dict().items()}}


def _pretrain(out_dir, micro_batch_size, distributed):
    """A TriLM pretraining run (Spectra's schedule) through the same trainer."""
    from tritium.train.pretrain import pretrain, pretrain_config

    seqs = torch.randint(0, 300, (8, 16), generator=torch.Generator().manual_seed(1))
    config = pretrain_config("trilm", "tiny-xs", seqlen=16, train=dict(
        steps=3, micro_batch_size=micro_batch_size, grad_accum=2, seed=5, progress=False, distributed=distributed,
        precision="fp32"))
    result = pretrain(config, seqs, out_dir, vocab_size=300)
    from safetensors.torch import load_file

    return {"losses": result.train.losses(), "saved": load_file(os.path.join(out_dir, "model", "model.safetensors"))
            if int(os.environ.get("RANK", 0)) == 0 else None}


def _worker(rank, world, port, out_dir, modes):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for mode in modes:  # one spawn for both modes: starting processes costs more than the runs
            run = _pretrain if mode.startswith("pretrain-") else _run
            out = run(os.path.join(out_dir, mode), micro_batch_size=1, distributed=mode.removeprefix("pretrain-"))
            if rank == 0:
                torch.save(out, os.path.join(out_dir, f"{mode}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODES = ("ddp", "fsdp")
PRETRAIN_MODES = ("pretrain-fsdp",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp), MODES + PRETRAIN_MODES), nprocs=2, join=True)
    out = {mode: torch.load(tmp / f"{mode}.pt") for mode in MODES + PRETRAIN_MODES}
    out["single"] = _run(tmp / "single", micro_batch_size=2, distributed="none")
    out["pretrain-single"] = _pretrain(tmp / "pretrain-single", micro_batch_size=2, distributed="none")
    return out


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_equal_one(runs, mode):
    parallel, single = runs[mode], runs["single"]
    assert parallel["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert len(parallel["grads"]) == len(single["grads"]) == STEPS
    for step_p, step_s in zip(parallel["grads"], single["grads"]):
        assert step_p.keys() == step_s.keys() and len(step_s) > 0
        for name in step_s:
            torch.testing.assert_close(step_p[name], step_s[name], rtol=1e-4, atol=1e-6, msg=name)
    for name, value in single["params"].items():
        torch.testing.assert_close(parallel["params"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_trilm_pretraining_under_fsdp_equals_one_process(runs):
    """The Spectra path too: ternary linears sharded by FSDP, the schedule, and a saved model gathered whole."""
    parallel, single = runs["pretrain-fsdp"], runs["pretrain-single"]
    assert len(single["losses"]) == 3
    assert parallel["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert parallel["saved"].keys() == single["saved"].keys()
    for name, value in single["saved"].items():
        torch.testing.assert_close(parallel["saved"][name], value, rtol=1e-4, atol=1e-5, msg=name)
