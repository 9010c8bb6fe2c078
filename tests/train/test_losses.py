import copy

import pytest
import torch

from tritium.models import tiny_model
from tritium.train.dlt import DLTConfig, to_dlt_
from tritium.train.losses import DistillationInputError, DistillationLoss, LossConfig, kl_logits, off_loss


def _hidden(seed, blocks=3, shape=(2, 5, 8)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(blocks)]


def test_off_loss_is_invariant_to_each_tokens_scale():
    student, teacher = _hidden(0), _hidden(1)
    base = off_loss(student, teacher)
    gen = torch.Generator().manual_seed(2)
    # a different positive scale per token (and per block): huge and tiny, as outliers make them
    scaled = [s * torch.exp(4 * torch.randn(s.shape[:-1] + (1,), generator=gen)) for s in student]
    torch.testing.assert_close(off_loss(scaled, teacher), base)
    torch.testing.assert_close(off_loss(student, [t * 1e3 for t in teacher]), base)
    # ... but it is not blind: flipping the sign of one token changes it, and equal states give 0
    flipped = [s.clone() for s in student]
    flipped[0][0, 0] *= -1
    assert not torch.allclose(off_loss(flipped, teacher), base)
    assert off_loss(teacher, teacher).abs() < 1e-6


def test_off_loss_sums_blocks_and_averages_tokens():
    s, t = _hidden(0), _hidden(1)
    per_block = [(1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean() for a, b in zip(s, t)]
    torch.testing.assert_close(off_loss(s, t), sum(per_block))


def test_kl_is_zero_for_equal_logits_and_scales_with_temperature():
    logits = torch.randn(2, 4, 10)
    assert kl_logits(logits, logits).abs() < 1e-6
    other = torch.randn(2, 4, 10)
    p = torch.softmax(other, -1)
    manual = (p * (torch.log_softmax(other, -1) - torch.log_softmax(logits, -1))).sum(-1).mean()
    torch.testing.assert_close(kl_logits(logits, other), manual)
    assert kl_logits(logits, other, temperature=2.0) != kl_logits(logits, other)


def test_distillation_loss_on_a_tiny_model_trains_only_the_student():
    teacher = tiny_model("llama", seed=3)
    student = copy.deepcopy(teacher)
    to_dlt_(student, DLTConfig(group=32))
    student.train()
    loss_fn = DistillationLoss(teacher, LossConfig(off_weight=1.0, kl_weight=1.0, ce_weight=0.5), student)
    ids = torch.randint(0, 512, (2, 12))
    total, parts = loss_fn(student, ids)
    assert set(parts) == {"off", "kl", "ce"} and parts["off"] > 0 and parts["kl"] > 0
    torch.testing.assert_close(total.detach(), parts["off"] + parts["kl"] + 0.5 * parts["ce"])
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.model.layers[0].self_attn.q_proj.alpha.grad is not None
    # the float student equals its teacher: OFF and KL are zero
    same, _ = DistillationLoss(teacher, LossConfig(ce_weight=0.0))(copy.deepcopy(teacher), ids)
    assert same.abs() < 1e-5


def test_vocabulary_mismatch_fails_clearly():
    with pytest.raises(DistillationInputError, match="vocabulary"):
        DistillationLoss(tiny_model("llama", vocab_size=300), LossConfig(), tiny_model("llama"))
    with pytest.raises(DistillationInputError, match="every loss weight is 0"):
        LossConfig(off_weight=0, kl_weight=0, ce_weight=0)
