"""bench_online_rotation's plumbing on a tiny model: the float-equal variants equal float, the KV ones do not."""

import torch

from bench_scripts import load_bench
from tritium.models import tiny_model


def test_variants_on_a_tiny_model():
    bench = load_bench("bench_online_rotation")
    model = tiny_model("llama", intermediate_size=192)
    ids = torch.randint(0, model.config.vocab_size, (1, 4 * 32), generator=torch.Generator().manual_seed(0))
    saved = []
    results = bench.run_variants(model, ids, seqlen=32, limit=3, results={}, save=lambda r: saved.append(len(r)))
    assert set(results) == {"float", *bench.VARIANTS}
    assert saved == list(range(1, len(bench.VARIANTS) + 2))  # saved after every row
    for name in bench.FLOAT_EQUAL_VARIANTS:
        assert results[name]["relative_ppl_difference"] < 1e-5, results[name]
    for name in ("kv8", "kv4", "kv4-r3"):
        assert results[name]["max_chunk_nll_difference"] > 0
    assert results["kv4"]["max_chunk_nll_difference"] > results["kv8"]["max_chunk_nll_difference"]
    assert results["float"]["chunks"] == 3
    table = bench.markdown(results)
    assert "| kv4-r3 |" in table and "| float |" in table
    # the float model itself was not touched by the variants
    assert model.config._attn_implementation == "sdpa"
    # a rerun skips what the results hold
    again = bench.run_variants(model, ids, seqlen=32, limit=3, results=dict(results), save=lambda r: saved.append(0))
    assert again == results and saved[-1] != 0
