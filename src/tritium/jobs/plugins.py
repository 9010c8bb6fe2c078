"""The one place that registers tritium's plug-ins: every job (and the package-level API) imports it.

* method "dlt", TernaryLLM's distillation, which trains and so lives above the method registry
  (:mod:`tritium.train.distill` registers it when imported);
* the ``quant_method: "tritium"`` quantizer of transformers' ``from_pretrained``
  (:mod:`tritium.integrations.hf`), registered when transformers loads its quantizers.
"""

from __future__ import annotations

from ..integrations import register_with_transformers
from ..train import distill  # noqa: F401  (registers method "dlt")

register_with_transformers()
