"""bench/pad_model.py: a zero-padded model keeps its logits, with every width a multiple."""

import pytest
import torch

from bench_scripts import load_bench
from tritium.models import tiny_model


@pytest.fixture(scope="module")
def bench():
    return load_bench("pad_model")


@pytest.mark.parametrize("family,tied,dead", [("llama", False, "zero"), ("llama", True, "zero"),
                                              ("qwen2", False, "zero"), ("llama", True, "noise")])
def test_the_padded_model_gives_the_same_logits(bench, family, tied, dead):
    model = tiny_model(family, seed=0, tie_word_embeddings=tied).eval()
    padded = bench.pad_model(model, 96, dead).eval()  # hidden 64 → 96: 6 query heads over 2 key/value heads
    q = padded.model.layers[0].self_attn.q_proj.weight
    assert bool((q[:, 64:] != 0).any()) == (dead == "noise")
    c = padded.config
    assert (c.hidden_size, c.num_attention_heads, c.intermediate_size) == (96, 6, 192)
    assert all(w.shape[-1] % 96 == 0 for n, w in padded.named_parameters() if n.endswith("proj.weight"))
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(ids).logits, padded(ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), float((got - want).abs().max())


def test_heads_that_cannot_be_grouped_are_refused(bench):
    model = tiny_model("llama", seed=0)  # 4 heads of 16 over 2 key/value heads
    with pytest.raises(bench.PaddingError, match="cannot be grouped"):
        bench.pad_model(model, 80)  # 80 = 5 heads: not a multiple of 2 groups


def test_bad_flags_fail_before_the_model_loads(bench, tmp_path, capsys):
    existing = tmp_path / "out"
    existing.mkdir()
    for flags, message in ((["--multiple", "0", "--out", str(tmp_path / "new")], "--multiple must be at least 1"),
                           (["--model", "no-such-model", "--out", str(existing)], "exists: pass --overwrite")):
        with pytest.raises(SystemExit):
            bench.main(flags)
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and list(existing.iterdir()) == []
