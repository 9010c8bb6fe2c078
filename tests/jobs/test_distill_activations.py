"""W·A distillation (BitNet b1.58's W1.58A8): distill with act_bits quantizes every student linear's input per
token while it trains and after, saves the grids with the folder, and is refused where it cannot work."""

from __future__ import annotations

import json

import pytest
import torch

import tritium.runner as steps
from tritium.cli import main
from tritium.models import load_model
from tritium.nn.activation_quant import activation_grids


def distill_args(model, out, train, *extra):
    return ["distill", "--model", str(model), "--recipe", "ternaryllm-cpu", "--steps", "3", "--data", str(train),
            "--train-seqlen", "16", "--micro-batch-size", "2", "--group", "32", "--eval", "wikitext2", "--limit",
            "1", "--seqlen", "32", "--no-progress", "--no-float", "--out", str(out), *extra]


@pytest.fixture
def train_text(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. A ternary weight is one of three values. " * 30)
    return path


def _log(run):
    return [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]


def test_w158a8_distill_trains_and_saves_with_8_bit_activations(tiny_folder, tiny_data, tmp_path, train_text,
                                                                capsys):
    a8, a16 = tmp_path / "a8", tmp_path / "a16"
    assert main(distill_args(tiny_folder, a8, train_text, "--act-bits", "8")) == 0  # packed: the int8 kernel
    assert main(distill_args(tiny_folder, a16, train_text, "--format", "fake")) == 0
    # the same seed and data: only the activations' rounding separates the two runs' losses
    losses_a8, losses_a16 = [r["loss"] for r in _log(a8)], [r["loss"] for r in _log(a16)]
    assert losses_a8 != losses_a16 and abs(losses_a8[0] - losses_a16[0]) < 0.1 * losses_a16[0]
    row = json.loads((a8 / "results.json").read_text())["rows"][-1]
    assert row["activations"]["grid"] == {"bits": 8, "symmetric": True, "group": "token", "clip_ratio": 1.0}
    loaded, _, _ = load_model(a8 / "model")
    grids = activation_grids(loaded)
    assert len(grids) == 14 and {g.bits for g in grids.values()} == {8}  # every decoder linear, not the head
    assert "lm_head" not in grids
    plain, _, _ = load_model(a16 / "model")
    assert activation_grids(plain) == {}


def test_the_a8_recipe_is_ternaryllm_cpu_with_8_bit_activations():
    from tritium.recipes import load_recipe

    a8, base = load_recipe("ternaryllm-a8-cpu"), load_recipe("ternaryllm-cpu")
    assert (a8["act_bits"], a8["act_symmetric"], a8["act_group"]) == (8, True, "token")
    assert a8["method_args"] == base["method_args"] and a8["grid"] == base["grid"]


def test_the_students_inputs_are_quantized_while_it_trains(tiny_data, monkeypatch):
    """The quantizers sit on the student's linears from step 0 (not only on the folded model)."""
    import tritium.nn.activation_quant as activation_quant
    from tritium.models import tiny_model
    from tritium.quant.activations import ActivationGrid
    from tritium.quant.grids import TernaryGrid
    from tritium.train.distill import DistillConfig, distill

    calls = []
    real = activation_quant.fake_quantize_activations
    monkeypatch.setattr(activation_quant, "fake_quantize_activations",
                        lambda x, grid: calls.append(x.requires_grad) or real(x, grid))
    model = tiny_model("llama", seed=0)
    config = DistillConfig(grid=TernaryGrid(variant="dlt", group=32), act_grid=ActivationGrid(bits=8),
                           train={"steps": 1, "micro_batch_size": 2, "progress": False})
    seqs = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    result, _ = distill(model, None, config, tiny_data / "run", sequences=seqs)
    assert len(calls) >= 14 and any(calls)  # the training forward, with gradients flowing through the STE
    assert set(result.act_grids) == set(result.weights)


@pytest.fixture
def spies(record_calls):
    return record_calls([(steps, "evaluate"), (steps, "float_row")])


def test_a_packed_w_a_distill_and_a_clipping_search_are_refused_before_loading(tiny_folder, tiny_data, tmp_path,
                                                                               train_text, refused, monkeypatch):
    import tritium.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    refused(distill_args(tiny_folder, tmp_path / "run", train_text, "--act-bits", "4", "--format", "packed"),
            "--format fake")
    assert not (tmp_path / "run").exists()
    recipe = tmp_path / "searched.yaml"
    from tritium.recipes import load_recipe

    import yaml
    mapping = load_recipe("ternaryllm-a8-cpu")
    mapping.pop("name", None)
    recipe.write_text(yaml.safe_dump(mapping | {"act_clip_search": True}))
    args = distill_args(tiny_folder, tmp_path / "run2", train_text, "--format", "fake")
    args[args.index("ternaryllm-cpu")] = str(recipe)
    refused(args, "act_clip_search chooses clipping ratios", "set one act_clip_ratio")
    assert not (tmp_path / "run2").exists()
