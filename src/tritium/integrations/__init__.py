"""Plug-ins into other libraries: transformers' ``from_pretrained`` (:mod:`tritium.integrations.hf`).

Importing transformers costs seconds, so ``import tritium`` does not do it: it calls
:func:`register_with_transformers`, which registers tritium's quantizer at once when transformers'
quantizers are already loaded, and otherwise as soon as they are. ``from_pretrained`` on a tritium
folder then works in either import order.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

QUANTIZER_REGISTRY = "transformers.quantizers"  # the module whose registry from_pretrained reads
HF_INTEGRATION = "tritium.integrations.hf"


def _register_now() -> None:
    try:
        importlib.import_module(HF_INTEGRATION)
    except Exception as err:  # a transformers we cannot plug into must not break transformers itself
        warnings.warn(f"tritium could not register its quantizer with transformers ({type(err).__name__}: {err}); "
                      "tritium folders will not load through from_pretrained", stacklevel=2)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when transformers' quantizer registry is imported, it wraps that module's
    loader so the tritium quantizer registers right after the registry module has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != QUANTIZER_REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register_now()

    def __getattr__(self, name):  # resource readers and the like: the real loader's
        return getattr(self._loader, name)


def register_with_transformers() -> None:
    """Make ``from_pretrained`` load tritium folders, without importing transformers before it is needed."""
    if HF_INTEGRATION in sys.modules:
        return
    registry = sys.modules.get(QUANTIZER_REGISTRY)
    if registry is not None and getattr(getattr(registry, "__spec__", None), "_initializing", False) is False:
        _register_now()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
