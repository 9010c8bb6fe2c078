from synthetic_suite import make_suite

from tritium.spectra.plots import plot_suite


def test_plot_suite_writes_png_and_svg(tmp_path):
    entries = make_suite(0.5)
    paths = plot_suite(entries, tmp_path, extra_metrics=["val_ppl"])
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{m}_vs_{a}.{ext}" for m in ("val_loss", "val_ppl")
                           for a in ("params", "bits") for ext in ("png", "svg"))
    for p in paths:
        data = p.read_bytes()
        if p.suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        else:
            assert b"<svg" in data[:2000] and b"</svg>" in data
    svg = (tmp_path / "val_loss_vs_params.svg").read_text()
    assert "TriLM" in svg and "FloatLM" in svg and "fit" in svg  # legend with both families and the laws
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


def test_plot_suite_default_metrics_include_zero_shot(tmp_path):
    paths = plot_suite(make_suite(0.5), tmp_path)
    stems = {p.stem for p in paths}
    assert {"piqa_vs_params", "arc_easy_vs_bits", "zero_shot_avg_vs_params", "val_ppl_vs_bits"} <= stems
