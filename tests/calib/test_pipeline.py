import os
from pathlib import Path

import pytest
import torch

from tritium.calib import BlockResult, CalibrationInputError, NonFiniteError, PipelineSettings, run_blockwise
from tritium.calib import pipeline as pipeline_module
from tritium.methods import config_from_dict, quantize_
from tritium.methods.base import selected_linears
from tritium.models import decoder_layout, tiny_model
from tritium.quant.grids import UniformGrid, quantize_weight

GRID = UniformGrid(bits=2, group=32)


def calibration(n=4, seqlen=16, seed=0):
    return torch.randint(0, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def rtn_block(ctx):
    return BlockResult({name: quantize_weight(m.weight, GRID) for name, m in ctx.linears.items()})


def test_streams_follow_the_float_chain_and_the_quantized_chain():
    """Block i's target is the float model's output i; its input comes from the quantized blocks before it."""
    ids = calibration()
    float_model = tiny_model(num_hidden_layers=3)
    with torch.no_grad():
        float_hidden = float_model(ids, output_hidden_states=True).hidden_states
    rtn_model = tiny_model(num_hidden_layers=3)
    quantize_(rtn_model, config_from_dict("rtn", GRID))
    with torch.no_grad():
        rtn_hidden = rtn_model(ids, output_hidden_states=True).hidden_states
    seen = []

    def spy(ctx):
        seen.append((ctx.index, ctx.float_inputs.clone(), ctx.float_targets.clone(), ctx.quant_inputs.clone()))
        return rtn_block(ctx)

    model = tiny_model(num_hidden_layers=3)
    layout = decoder_layout(model)
    run_blockwise(model, layout, selected_linears(layout, ()), ids, spy, PipelineSettings(forward_batch_size=3),
                  GRID, "spy", progress=False)
    assert [s[0] for s in seen] == [0, 1, 2]
    for index, float_inputs, float_targets, quant_inputs in seen:
        assert torch.allclose(float_inputs, float_hidden[index], atol=1e-5)
        if index < 2:  # the last hidden state HF reports is after the final norm
            assert torch.allclose(float_targets, float_hidden[index + 1], atol=1e-5)
        assert torch.allclose(quant_inputs, rtn_hidden[index], atol=1e-5)
    assert not torch.allclose(seen[2][3], seen[2][1], atol=1e-4)  # the two streams really differ


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


RESUMABLE = {
    "gptq": dict(act_order=True, forward_batch_size=2),
    "awq": dict(n_grid=3, clip_n_grid=3, search_tokens=32, clip_tokens=16),
    # Random batch draws, AWQ token sampling and Adam all must replay identically.
    "tesseraq": dict(soft_fractions=(0.5,), steps_per_stage=3, batch_size=2, n_grid=3, clip_n_grid=3,
                     search_tokens=32, clip_tokens=16),
}


@pytest.mark.parametrize("method", sorted(RESUMABLE))
def test_resume_after_a_kill_gives_identical_weights(tmp_path, monkeypatch, method):
    ids = calibration()
    settings = RESUMABLE[method]
    uninterrupted = tiny_model(num_hidden_layers=3)
    quantize_(uninterrupted, config_from_dict(method, GRID, **settings), ids)

    original_save = pipeline_module.save_block_checkpoint

    def killed_after_block_one(folder, index, *args):
        original_save(folder, index, *args)
        if index == 1:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(pipeline_module, "save_block_checkpoint", killed_after_block_one)
    config = config_from_dict(method, GRID, checkpoint_dir=str(tmp_path / "ckpt"), **settings)
    with pytest.raises(KeyboardInterrupt):
        quantize_(tiny_model(num_hidden_layers=3), config, ids)
    monkeypatch.setattr(pipeline_module, "save_block_checkpoint", original_save)

    resumed = tiny_model(num_hidden_layers=3)  # a fresh process loads the float model again
    result = quantize_(resumed, config, ids)
    assert result.details["resumed_from_block"] == 2
    assert [b["block"] for b in result.details["blocks"]] == [0, 1, 2]
    expected, got = _weights(uninterrupted), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_checkpoint_of_another_run_is_refused(tmp_path):
    folder = str(tmp_path / "ckpt")
    quantize_(tiny_model(), config_from_dict("gptq", GRID, checkpoint_dir=folder), calibration(seed=0))
    with pytest.raises(CalibrationInputError, match="holds a different run"):
        quantize_(tiny_model(), config_from_dict("gptq", GRID, checkpoint_dir=folder), calibration(seed=1))


def test_checkpoint_of_an_older_algorithm_is_refused(tmp_path, monkeypatch):
    folder = str(tmp_path / "ckpt")
    monkeypatch.setattr(pipeline_module, "CHECKPOINT_VERSION", pipeline_module.CHECKPOINT_VERSION - 1)
    quantize_(tiny_model(), config_from_dict("gptq", GRID, checkpoint_dir=folder), calibration())
    monkeypatch.undo()
    with pytest.raises(CalibrationInputError, match="holds a different run"):
        quantize_(tiny_model(), config_from_dict("gptq", GRID, checkpoint_dir=folder), calibration())


def test_non_finite_activations_name_the_block_and_layer():
    model = tiny_model(num_hidden_layers=3)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.mlp\.up_proj \(block 1"):
        quantize_(model, config_from_dict("gptq", GRID), calibration())


def test_calibration_longer_than_the_context_fails_before_any_work():
    model = tiny_model(max_position_embeddings=16)
    with pytest.raises(CalibrationInputError, match="context of 16"):
        quantize_(model, config_from_dict("gptq", GRID), calibration(seqlen=17))


def test_disk_offload_keeps_one_block_in_memory_and_gives_the_same_weights(tmp_path):
    """Blocks wait on disk (meta tensors in memory) while another is calibrated; results are unchanged."""
    ids = calibration()
    reference = tiny_model(num_hidden_layers=3)
    reference_layout = decoder_layout(reference)
    expected, _ = run_blockwise(reference, reference_layout, selected_linears(reference_layout, ()), ids, rtn_block,
                                PipelineSettings(forward_batch_size=2), GRID, "rtn", progress=False)
    model = tiny_model(num_hidden_layers=3)
    layout = decoder_layout(model)
    in_memory = []

    def spy(ctx):
        in_memory.append([not any(p.is_meta for p in b.parameters()) for b in layout.blocks])
        return rtn_block(ctx)

    weights, details = run_blockwise(model, layout, selected_linears(layout, ()), ids, spy,
                                     PipelineSettings(forward_batch_size=2, offload_dir=str(tmp_path / "offload")),
                                     GRID, "rtn", progress=False)
    assert in_memory == [[True, False, False], [False, True, False], [False, False, True]]
    assert details["offload_dir"] == str(tmp_path / "offload")
    assert not any(p.is_meta for p in model.parameters())  # the whole model is back after the run
    for name, qweight in expected.items():
        assert torch.equal(weights[name].codes, qweight.codes)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), name
    assert not list((tmp_path / "offload").iterdir())  # nothing left behind on disk


def test_a_failing_block_still_brings_the_offloaded_model_back(tmp_path):
    model = tiny_model(num_hidden_layers=3)
    layout = decoder_layout(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def fail_on_second(ctx):
        if ctx.index == 1:
            raise NonFiniteError("simulated")
        return BlockResult({})

    with pytest.raises(NonFiniteError):
        run_blockwise(model, layout, selected_linears(layout, ()), calibration(), fail_on_second,
                      PipelineSettings(offload_dir=str(tmp_path / "offload")), GRID, "x", progress=False)
    for name, p in model.named_parameters():
        assert not p.is_meta and torch.equal(p, before[name]), name


def test_short_memory_puts_the_blocks_on_disk_by_itself(monkeypatch):
    """No --offload-dir, but less memory available than the blocks take: they wait on disk anyway."""
    ids = calibration()
    reference = tiny_model(num_hidden_layers=3)
    reference_layout = decoder_layout(reference)
    expected, roomy = run_blockwise(reference, reference_layout, selected_linears(reference_layout, ()), ids,
                                    rtn_block, PipelineSettings(forward_batch_size=2), GRID, "rtn", progress=False)
    assert roomy["auto_offload"] is False  # this machine has room for a tiny model
    model = tiny_model(num_hidden_layers=3)
    layout = decoder_layout(model)
    monkeypatch.setattr(pipeline_module, "memory_available_bytes", lambda: pipeline_module.blocks_bytes(layout) // 2)
    in_memory = []

    def spy(ctx):
        in_memory.append([not any(p.is_meta for p in b.parameters()) for b in layout.blocks])
        return rtn_block(ctx)

    with pytest.warns(RuntimeWarning, match="memory is short"):
        weights, details = run_blockwise(model, layout, selected_linears(layout, ()), ids, spy,
                                         PipelineSettings(forward_batch_size=2), GRID, "rtn", progress=False)
    assert details["auto_offload"] is True
    assert in_memory == [[True, False, False], [False, True, False], [False, False, True]]
    # named as tritium's temporaries are, so the next run clears one that a killed run left
    assert Path(details["offload_dir"]).name.startswith(f".offload.tritium-{os.getpid()}.")
    assert not Path(details["offload_dir"]).exists()  # the temporary folder is gone afterwards
    for name, qweight in expected.items():
        assert torch.equal(weights[name].codes, qweight.codes)
    assert not any(p.is_meta for p in model.parameters())
