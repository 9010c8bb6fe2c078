import json

import pytest
import torch

from tritium.models import tiny_model, tiny_tokenizer
from tritium.train.data import (
    SequenceSampler,
    TeacherCorpus,
    TeacherSamplingConfig,
    TrainDataError,
    generate_teacher_corpus,
    load_sequences,
    pack_tokens,
)

TEXT = "The quick brown fox jumps over the lazy dog. A ternary weight is minus one, zero or one. " * 20


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_text_and_jsonl_pack_into_fixed_length_sequences(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(TEXT)
    rows = [{"text": TEXT[:200]}, {"text": ""}, {"text": TEXT[200:600]}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    seqs = load_sequences([str(tmp_path)], tokenizer, seqlen=16)
    eos = tokenizer.eos_token_id
    # files in sorted order, an end-of-text token after each non-empty document, none for the empty one
    stream = [i for t in [TEXT, TEXT[:200], TEXT[200:600]] for i in tokenizer(t, add_special_tokens=False).input_ids + [eos]]
    n = len(stream) // 16
    assert seqs.dtype == torch.long and torch.equal(seqs, torch.tensor(stream[: n * 16]).view(n, 16))


def test_bad_inputs_fail_clearly(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(TrainDataError, match="no text"):
        load_sequences([str(tmp_path / "empty.txt")], tokenizer, seqlen=8)
    with pytest.raises(TrainDataError, match="not found"):
        load_sequences([str(tmp_path / "nothing-*.txt")], tokenizer, seqlen=8)
    (tmp_path / "short.txt").write_text("a fox")
    with pytest.raises(TrainDataError, match="fewer than one sequence"):
        load_sequences([str(tmp_path / "short.txt")], tokenizer, seqlen=64)
    with pytest.raises(TrainDataError, match="longer than the model's context"):
        load_sequences([str(tmp_path / "short.txt")], tokenizer, seqlen=1024, model=tiny_model("llama"))
    with pytest.raises(TrainDataError, match="vocabulary"):
        load_sequences([str(tmp_path / "short.txt")], tokenizer, seqlen=2, model=tiny_model("llama", vocab_size=100))
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(TrainDataError, match="no 'text' field"):
        load_sequences([str(tmp_path / "bad.jsonl")], tokenizer, seqlen=2)
    test_split = tmp_path / "wikitext-2-raw-v1" / "wiki.test.raw"
    test_split.parent.mkdir()
    test_split.write_text(TEXT)
    with pytest.raises(TrainDataError, match="test split"):
        load_sequences([str(test_split)], tokenizer, seqlen=8)
    with pytest.raises(TrainDataError, match="test split"):
        load_sequences(["hf:wikitext:wikitext-2-raw-v1:test"], tokenizer, seqlen=8)
    with pytest.raises(TrainDataError, match="test split"):
        load_sequences(["wikitext2-test"], tokenizer, seqlen=8)


def test_sampler_is_a_seeded_permutation_per_epoch_and_resumes():
    sampler = SequenceSampler(10, seed=3)
    first = torch.cat([sampler.next_indices(4) for _ in range(5)])  # 20 = two epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    assert not torch.equal(first[:10], first[10:])
    again = SequenceSampler(10, seed=3)
    again.next_indices(4)
    state = again.state_dict()
    resumed = SequenceSampler(10, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat([resumed.next_indices(4) for _ in range(4)]), first[4:])
    with pytest.raises(TrainDataError, match="same data"):
        SequenceSampler(11, seed=3).load_state_dict(state)


def test_teacher_corpus_is_deterministic_for_a_seed_and_reused(tmp_path, tokenizer):
    teacher = tiny_model("llama", seed=5)
    cfg = TeacherSamplingConfig(n_sequences=5, seqlen=12, seed=7, shard_size=2, batch_size=2, greedy_tokens=2)
    a = generate_teacher_corpus(teacher, tokenizer, tmp_path / "a", cfg, progress=False).sequences()
    b = generate_teacher_corpus(teacher, tokenizer, tmp_path / "b", cfg, progress=False).sequences()
    assert a.shape == (5, 12) and torch.equal(a, b)
    other = TeacherSamplingConfig(**{**cfg.__dict__, "seed": 8})
    c = generate_teacher_corpus(teacher, tokenizer, tmp_path / "c", other, progress=False).sequences()
    assert not torch.equal(a, c)
    special = set(tokenizer.all_special_ids)
    assert not special & set(a[:, 0].tolist())
    # the greedy prefix follows the teacher's top-1 choice
    with torch.no_grad():
        logits = teacher(a[:, :2]).logits
    assert torch.equal(logits[:, 0].argmax(-1), a[:, 1])
    # an interrupted run: a missing shard is regenerated identically, the others are kept
    (tmp_path / "a" / "shard-00001.safetensors").unlink()
    with pytest.raises(TrainDataError, match="incomplete"):
        TeacherCorpus.open(tmp_path / "a")
    again = generate_teacher_corpus(teacher, tokenizer, tmp_path / "a", cfg, progress=False).sequences()
    assert torch.equal(again, a)
    # a corpus is a training source, and another teacher may not reuse the folder
    assert torch.equal(load_sequences([str(tmp_path / "a")], tokenizer, seqlen=12, model=teacher), a)
    with pytest.raises(TrainDataError, match="another teacher|other settings"):
        generate_teacher_corpus(tiny_model("llama", seed=6), tokenizer, tmp_path / "a", cfg, progress=False)


def test_pack_tokens_drops_the_tail():
    out = pack_tokens(torch.arange(10), 3)
    assert torch.equal(out, torch.arange(9).view(3, 3))


def test_training_text_holding_a_test_split_is_refused_by_content(staged, tmp_path, monkeypatch, tokenizer):
    from staged_splits import paragraphs

    from tritium.data.contamination import EvalSplitOverlapError

    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.chdir(mine)
    rows = [{"body": p} for p in paragraphs(2, 20) + paragraphs(1, 80)[:2]]
    (mine / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalSplitOverlapError, match="wikitext2 test split"):
        load_sequences(["notes.jsonl"], tokenizer, seqlen=16, text_field="body")
    with pytest.raises(EvalSplitOverlapError, match="wikitext2 test split"):
        load_sequences([str(mine)], tokenizer, seqlen=16, text_field="body")  # inside a folder
    (mine / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    assert load_sequences(["notes.jsonl"], tokenizer, seqlen=16, text_field="body").shape[1] == 16
    assert load_sequences(["wikitext2-valid"], tokenizer, seqlen=16).shape[1] == 16
