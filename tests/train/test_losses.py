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


def _whole_vocabulary_kl(student, teacher, temperature):
    vocab = student.shape[-1]
    s = torch.log_softmax(student.reshape(-1, vocab).float() / temperature, -1)
    t = torch.log_softmax(teacher.reshape(-1, vocab).float() / temperature, -1)
    return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_kl_equals_the_whole_vocabulary_kl_in_value_and_gradient(monkeypatch, dtype, temperature):
    """The chunked KL (a few rows at a time, its gradient formed in the forward) against autograd through the
    plain formula, with chunks that split the rows unevenly (3 rows of 10 per chunk, 7 rows)."""
    import tritium.train.losses as losses

    monkeypatch.setattr(losses, "KL_CHUNK_VALUES", 30)
    gen = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(1, 7, 10, generator=gen)).to(dtype).requires_grad_(True)
    teacher = (3 * torch.randn(1, 7, 10, generator=gen)).to(dtype)
    reference = student.detach().clone().requires_grad_(True)
    upstream = torch.tensor(1.7)
    expected = _whole_vocabulary_kl(reference, teacher, temperature)
    (expected * upstream).backward()
    got = kl_logits(student, teacher, temperature)
    (got * upstream).backward()
    assert got.dtype == torch.float32 and got > 0
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)
    assert student.grad.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    torch.testing.assert_close(student.grad, reference.grad, **tol)


def test_kl_refuses_logits_of_different_shapes():
    with pytest.raises(DistillationInputError, match="logit shapes differ"):
        kl_logits(torch.randn(2, 3, 10), torch.randn(2, 3, 11))
