"""A synthetic Spectra suite on a known law, shared by the tests of tritium.spectra."""

import math

import numpy as np

from tritium.spectra.records import SuiteEntry


EMBED_PARAMS = 500_000  # vocab × width, kept at 16 bits by every family
SIZES = {"s1": 1_000_000, "s4": 4_000_000, "s16": 16_000_000, "s64": 64_000_000}


def law(n, A=300.0, alpha=0.3, eps=2.0):
    return A * np.power(n, -alpha) + eps


def make_suite(tri_efficiency: float, sizes=SIZES, float_sizes=SIZES) -> list[SuiteEntry]:
    """FloatLM on the law; TriLM as good as a FloatLM with ``tri_efficiency`` × its parameters.

    Bits: FloatLM 16 per weight, TriLM 1.58 per weight, embeddings 16 bits in both.
    """
    entries = []
    for size, n in float_sizes.items():
        loss = float(law(n))
        entries.append(SuiteEntry("FloatLM", size, n + EMBED_PARAMS, n, 16.0 * (n + EMBED_PARAMS), loss,
                                  {"val_ppl": math.exp(loss), "piqa": 0.5 + 0.02 * math.log10(n),
                                   "arc_easy": 0.3 + 0.03 * math.log10(n)}, tokens=20 * n))
    for size, n in sizes.items():
        loss = float(law(n * tri_efficiency))
        entries.append(SuiteEntry("TriLM", size, n + EMBED_PARAMS, n, 1.58 * n + 16.0 * EMBED_PARAMS, loss,
                                  {"val_ppl": math.exp(loss), "piqa": 0.49 + 0.02 * math.log10(n),
                                   "arc_easy": 0.29 + 0.03 * math.log10(n)},
                                  tokens=20 * n, train_seconds=12.5, tokens_per_second=3.2e4, mfu=0.41))
    return entries
