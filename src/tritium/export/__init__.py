"""Writers for formats that runtimes load: compressed-tensors (vLLM), GGUF (llama.cpp) and tritium's packed folders.

One entry point serves them all, through a registry of exporters (:mod:`tritium.export.registry`)::

    tritium.export.export("runs/my-run", format="compressed-tensors", out="ct/")
    tritium.export_model(model, format="gguf", out="model.gguf", result=result, tokenizer=tokenizer)

``tritium.export`` stays the subpackage (``import tritium.export`` and its modules work as before);
the function is ``tritium.export.export`` and, at package level, ``tritium.export_model``.
"""


def export(model_or_folder, format: str = "compressed-tensors", out=None, **kwargs):
    """Export a run folder, model folder or quantized model; see :func:`tritium.export.api.export_model`."""
    from .api import export_model

    return export_model(model_or_folder, format=format, out=out, **kwargs)


def export_formats() -> dict[str, str]:
    """The registered export formats and their summaries."""
    from .registry import export_formats as formats

    return formats()
