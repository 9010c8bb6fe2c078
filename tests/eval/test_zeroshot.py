import json

import pytest
import torch

from tritium.eval.zeroshot import TASKS, Doc, encode_pair, evaluate_docs, evaluate_task, loglikelihoods, score_docs


def direct_logprob(model, tokenizer, context, continuation):
    ctx = tokenizer.encode(context)
    cont = tokenizer.encode(context + continuation)[len(ctx):]
    ids = torch.tensor([ctx + cont])
    logprobs = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(logprobs[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


def test_batched_loglikelihood_equals_one_at_a_time(llama, tokenizer):
    pairs = [("The quick brown", " fox"), ("A ternary weight is", " minus one, zero or one"),
             ("Perplexity", " is the exponential"), ("The", " lazy dog")]
    batched = loglikelihoods(llama, tokenizer, pairs, batch_size=3, progress=False)
    for (ctx, cont), (score, _) in zip(pairs, batched):
        assert score == pytest.approx(direct_logprob(llama, tokenizer, ctx, cont), abs=1e-4)


def test_trailing_space_moves_to_the_continuation(tokenizer):
    assert encode_pair(tokenizer, "Answer: ", "yes") == encode_pair(tokenizer, "Answer:", " yes")


def test_acc_and_acc_norm_by_hand():
    docs = [Doc(["q"] * 2, [" a", " bbbbbbbb"], gold=1, choice_texts=["a", "bbbbbbbb"]),
            Doc(["q"] * 2, [" a", " b"], gold=0, choice_texts=["a", "b"])]
    # doc 1: raw scores favour choice 0 (-2 > -8) but per character choice 1 (-1 > -2)
    scores = [(-2.0, False), (-8.0, False), (-1.0, True), (-3.0, False)]
    assert score_docs(docs, scores, ("acc", "acc_norm")) == {"acc": 0.5, "acc_norm": 1.0}


def test_lambada_style_metrics():
    docs = [Doc(["ctx"], [" word"], 0, ["word"]), Doc(["ctx"], [" other"], 0, ["other"])]
    out = score_docs(docs, [(-1.0, True), (-3.0, False)], ("acc", "ppl"))
    assert out["acc"] == 0.5 and out["ppl"] == pytest.approx(2.718281828 ** 2)


def test_a_model_that_knows_the_answer_scores_perfectly(llama, tokenizer):
    # Make the LM head prefer one token strongly: the choice made of it must win every doc.
    favourite = tokenizer.encode(" fox")[0]

    def prefer_favourite(module, inputs, logits):
        logits = logits.clone()
        logits[..., favourite] += 100.0
        return logits

    llama.lm_head.register_forward_hook(prefer_favourite)
    docs = [Doc(["The quick brown"] * 2, [" dog", " fox"], 1, ["dog", "fox"]),
            Doc(["A"] * 3, [" fox", " cat", " lazy"], 0, ["fox", "cat", "lazy"])]
    assert evaluate_docs(llama, tokenizer, docs, progress=False)["acc"] == 1.0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_loads_and_scores(task, data_dir, llama, tokenizer):
    result = evaluate_task(llama, tokenizer, task, limit=3, data_path=data_dir, progress=False)
    assert result.n_docs == 3
    for metric in TASKS[task].metrics:
        value = result.metrics[metric]
        assert (value > 1 if metric == "ppl" else 0 <= value <= 1)


def test_task_formats_follow_lm_eval(data_dir):
    piqa = TASKS["piqa"].load(data_dir)
    assert piqa[0].contexts[0].startswith("Question: How do I ready a guinea pig cage") and piqa[0].contexts[0].endswith("\nAnswer:")
    wino = TASKS["winogrande"].load(data_dir)[0]
    assert wino.contexts == ["Sarah was a much better surgeon than Maria so Sarah",
                             "Sarah was a much better surgeon than Maria so Maria"]
    assert wino.continuations == [" always got the easier cases."] * 2 and wino.gold == 1
    hs = TASKS["hellaswag"].load(data_dir)[0]
    assert hs.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He" and hs.gold == 3
    boolq = TASKS["boolq"].load(data_dir)[0]
    assert boolq.continuations == [" no", " yes"] and boolq.gold == 0
    lam = TASKS["lambada_openai"].load(data_dir)[0]
    first = json.loads((data_dir / "lambada_openai" / "lambada_test.jsonl").open().readline())["text"]
    assert lam.contexts[0] + lam.continuations[0] == first


def test_a_continuation_longer_than_the_context_window_scores_the_part_the_window_predicts(llama, tokenizer):
    # A small model's context (256 for the Spectra miniatures) is shorter than some PIQA answers.
    window = 6
    context, continuation = "Question: how?\nAnswer:", " first you take the small one and then the large one"
    ctx, cont = encode_pair(tokenizer, context, continuation)
    assert len(cont) > window + 1
    (score, _), = loglikelihoods(llama, tokenizer, [(context, continuation)], max_length=window, progress=False)
    kept = (ctx + cont)[-(window + 1):]  # all continuation tokens: the first has no prediction
    logprobs = torch.log_softmax(llama(torch.tensor([kept[:-1]])).logits[0].double(), -1)
    expected = sum(logprobs[i, t].item() for i, t in enumerate(kept[1:]))
    assert score == pytest.approx(expected, abs=1e-4)
