"""Fuzz: random truncations and byte flips of a packed folder and of a GGUF file.

Every load either raises a tritium error or gives exactly the original tensors: never a silent
difference. Seeded and bounded in time (about 8 s per format, the packed folder's split between
checking the weights before and beside the load), so it runs with the unit tests.
"""

import random
import time

import pytest
import torch

from tritium import TritiumError
from tritium.export.gguf import write_gguf
from tritium.export.hf import save_packed
from tritium.methods import RTNConfig, quantize_
from tritium.models import load_model, tiny_model, tiny_tokenizer
from tritium.nn import pack_model
from tritium.quant import TernaryGrid, grid_to_dict

SECONDS = 8
MIN_TRIALS = 40


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(state, reference) -> bool:
    return state.keys() == reference.keys() and all(
        state[k].dtype == reference[k].dtype and torch.equal(state[k], reference[k]) for k in reference)


def _damage(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        cut = rng.randrange(len(data))
        return data[:cut], f"cut at {cut}"
    damaged = bytearray(data)
    where = [rng.randrange(len(data)) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    for offset in where:
        damaged[offset] ^= rng.randrange(1, 256)
    return bytes(damaged), f"flipped {where}"


def _fuzz(paths: list, load, reference: dict, seed: int, seconds: float = SECONDS) -> dict:
    """Damage one file of ``paths`` at a time, load, and restore it; returns how the loads ended."""
    rng = random.Random(seed)
    originals = {path: path.read_bytes() for path in paths}
    outcomes = {"refused": 0, "identical": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or sum(outcomes.values()) < MIN_TRIALS:
        path = rng.choice(paths)
        damaged, how = _damage(rng, originals[path])
        path.write_bytes(damaged)
        try:
            state = load()
        except TritiumError:
            outcomes["refused"] += 1
        else:
            assert _same(state, reference), f"{path.name} {how}: loaded with different tensors and no error"
            outcomes["identical"] += 1
        finally:
            path.write_bytes(originals[path])
    return outcomes


@pytest.mark.parametrize("background", [False, True])
def test_damaged_packed_folders_are_refused_or_load_exactly(tmp_path, monkeypatch, background):
    from tritium.utils import integrity

    if background:  # the weights are hashed in a thread beside the load, as large files are
        monkeypatch.setattr(integrity, "BACKGROUND_BYTES", 0)
    grid = TernaryGrid("dlt", group=32)
    model = tiny_model("llama", seed=3)
    pack_model(model, quantize_(model, RTNConfig(grid=grid)).weights)
    folder = tmp_path / "packed"
    save_packed(model, tiny_tokenizer(), folder, "rtn", grid_to_dict(grid), float_dtype="float16")
    reference = _state(load_model(folder)[0])
    outcomes = _fuzz(sorted(p for p in folder.iterdir() if p.is_file()), lambda: _state(load_model(folder)[0]),
                     reference, seed=18 + background, seconds=SECONDS / 2)
    assert outcomes["refused"] >= MIN_TRIALS // 2, outcomes


def test_damaged_gguf_files_are_refused_or_load_exactly(tmp_path):
    model = tiny_model("llama", seed=4, hidden_size=256, intermediate_size=384)  # a TQ1_0 / Q4_0 mix
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    path = tmp_path / "tiny.gguf"
    write_gguf(model, path, result.weights, "tq1_0", tokenizer=tiny_tokenizer())
    reference = _state(load_model(path)[0])
    outcomes = _fuzz([path], lambda: _state(load_model(path)[0]), reference, seed=19)
    assert outcomes["refused"] >= MIN_TRIALS // 2, outcomes


def test_without_the_checks_the_fuzz_oracle_sees_a_flipped_embedding(tmp_path, monkeypatch):
    """The oracle can fail: with the manifest check switched off, one flipped embedding byte loads silently
    (the packed modules' own CRCs cover only codes and scales) and _same tells the tensors apart."""
    from tritium.utils import integrity

    grid = TernaryGrid("absmean", group=32)
    model = tiny_model("llama", seed=5)
    pack_model(model, quantize_(model, RTNConfig(grid=grid)).weights)
    folder = tmp_path / "packed"
    save_packed(model, tiny_tokenizer(), folder, "rtn", grid_to_dict(grid))
    reference = _state(load_model(folder)[0])
    start, end = integrity.safetensors_tensor_ranges(folder / "model.safetensors")["model.embed_tokens.weight"]
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[(start + end) // 2] ^= 0x10
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(TritiumError):
        load_model(folder)
    monkeypatch.setattr(integrity, "verify_folder", lambda folder, background=False: None)
    monkeypatch.setattr(integrity, "warn_unsealed", lambda folder: None)
    assert not _same(_state(load_model(folder)[0]), reference)
