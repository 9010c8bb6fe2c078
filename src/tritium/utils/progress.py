"""One switch for every progress bar: tritium's own (:func:`progress_bar`) and those of transformers,
huggingface_hub and datasets. ``--no-progress`` turns it off for the whole command."""

from __future__ import annotations

import functools
import importlib
import sys
from contextlib import contextmanager

_enabled = True

# Library modules that call tqdm directly, past their library's switch (each imported only by the caller that
# runs it): transformers' GGUF reader ("Converting and de-quantizing GGUF tensors"), and lm-eval's request loops
# ("Running loglikelihood requests").
GGUF_READER_MODULES = ("transformers.modeling_gguf_pytorch_utils",)
LM_EVAL_MODULES = ("lm_eval.api.model", "lm_eval.api.task", "lm_eval.models.huggingface")


def progress_bars_enabled() -> bool:
    return _enabled


def set_progress_bars(enabled: bool) -> None:
    """Show (True) or hide (False) every progress bar of this process from now on."""
    global _enabled
    _enabled = bool(enabled)
    # transformers' switch sets huggingface_hub's too. Importing it is needed only to turn bars off: a library
    # imported later starts with them on. (Their environment variables are not used: once read, they would
    # forbid turning the bars back on for the next command of the same process.)
    if not _enabled or "transformers" in sys.modules:
        try:
            from transformers.utils import logging as transformers_logging
        except ImportError:
            pass
        else:
            (transformers_logging.enable_progress_bar if _enabled else transformers_logging.disable_progress_bar)()
    if "datasets" in sys.modules:  # importing datasets only to switch its bars would cost seconds
        follow_progress_switch(sys.modules["datasets"])


def follow_progress_switch(datasets_module) -> None:
    """Give ``datasets`` (just imported by the caller) the switch's state."""
    switch = getattr(datasets_module, "enable_progress_bars" if _enabled else "disable_progress_bars", None)
    if switch is not None:
        switch()


@contextmanager
def direct_library_bars_follow_switch(module_names: tuple[str, ...], enabled: bool = True):
    """While progress bars are off (or ``enabled`` is False), the modules named here that are installed get a
    tqdm that never shows, and datasets' bars are off; both restored on leaving."""
    if enabled and _enabled:
        yield
        return
    patched, datasets_module, datasets_were_on = [], None, False
    try:
        for name in module_names:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "tqdm"):
                patched.append((module, module.tqdm))
                module.tqdm = functools.partial(_silent_tqdm, module.tqdm)
        datasets_module = sys.modules.get("datasets")  # lm-eval imports it
        if datasets_module is not None:
            datasets_were_on = datasets_module.is_progress_bar_enabled()
            datasets_module.disable_progress_bars()
        yield
    finally:
        for module, original in patched:
            module.tqdm = original
        if datasets_were_on:
            datasets_module.enable_progress_bars()


def _silent_tqdm(tqdm_class, *args, **kwargs):
    kwargs["disable"] = True  # over the caller's own disable= (lm-eval passes disable=False)
    return tqdm_class(*args, **kwargs)


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar, shown only when ``enabled`` and progress bars are on (:func:`set_progress_bars`)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (enabled and _enabled), **kwargs)
