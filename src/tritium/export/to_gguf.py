"""GGUF files for llama.cpp, registered as the ``gguf`` export format (the writer is :mod:`tritium.export.gguf`)."""

from __future__ import annotations

from pathlib import Path

from ..quant.grids import GGUFBlockGrid, TernaryGrid
from .registry import ExportError, Exporter, register_exporter


@register_exporter("gguf")
class GGUFExporter(Exporter):
    kind = "file"  # write_gguf writes a temporary file, reads it back and renames it
    summary = ("GGUF file for llama.cpp (linears on a GGUF grid in its own type, ternary ones as TQ1_0/TQ2_0, "
               "others in exact fallback types)")
    default_out = "model.gguf"
    options = {"type": "tq1_0", "embedding_type": "f16", "allow_fallback": True}

    def check(self, grid, grid_overrides: dict, options: dict) -> None:
        from .gguf import EMBEDDING_TYPES
        from .gguf_tensors import TERNARY_TYPES

        if options["type"] not in TERNARY_TYPES:
            raise ExportError(f"GGUF type must be one of {', '.join(TERNARY_TYPES)}, not {options['type']!r}")
        if options["embedding_type"] not in EMBEDDING_TYPES:
            raise ExportError(f"GGUF embedding type must be one of {', '.join(EMBEDDING_TYPES)}, not "
                              f"{options['embedding_type']!r}")

    def check_config(self, config: dict, what: str) -> None:
        from .gguf import check_gguf_config

        check_gguf_config(config, what)

    def write(self, source, out: Path, options: dict):
        from ..nn import dequantize_head_, head_type_of
        from .api import ExportReport
        from .gguf import write_gguf

        lines = []
        head = head_type_of(source.model)
        if head != "f16":
            lines.append(f"note: the folder's {head} embedding and head are written from their decoded values as "
                         f"--embedding-type {options['embedding_type']}")
            dequantize_head_(source.model)
        report = write_gguf(source.model, out, source.weights, options["type"],
                            allow_fallback=options["allow_fallback"], embedding_type=options["embedding_type"],
                            tokenizer=source.tokenizer, overwrite=True)  # export_model checked --overwrite
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.type_counts().items()))
        if not isinstance(source.grid, (TernaryGrid, GGUFBlockGrid)):
            lines.append(f"note: {source.grid.describe()} is not ternary; TQ types cannot hold it, so its linears "
                         "went to the exact fallback types")
        lines += [f"wrote {report.path}: {report.file_bytes / 1e6:.2f} MB; tensor types: {counts}",
                  f"decoder linears: {report.linear_bits_per_weight:.4f} bits/weight; all tensors: "
                  f"{report.total_bits_per_weight:.4f} bits/weight; read-back max error {report.max_abs_error:.3g}"]
        checked = "llama.cpp tokenizes as HF does" if report.tokenization_checked else (
            "tokenization not checked (llama-cpp-python is not installed)")
        lines.append(f"vocabulary: {report.vocabulary}; {checked}")
        lines += [f"note: {note}" for note in report.notes]
        for name, reason in sorted(report.fallback_reasons.items())[:5]:
            lines.append(f"  fallback {name}: {reason}")
        if len(report.fallback_reasons) > 5:
            lines.append(f"  ... and {len(report.fallback_reasons) - 5} more fallbacks")
        return ExportReport(self.name, out, lines=lines, details={"gguf": report})
