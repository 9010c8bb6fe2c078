import json

import numpy as np
import pytest
from synthetic_suite import make_suite

from tritium.spectra.fit import fit_families
from tritium.spectra.records import SuiteEntry, load_suite


def test_suite_entry_json_round_trip():
    entries = make_suite(0.5)
    text = json.dumps([e.to_dict() for e in entries])
    back = [SuiteEntry.from_dict(d) for d in json.loads(text)]
    assert back == entries
    assert back[-1].mfu == 0.41 and back[0].train_seconds is None


def test_suite_entry_rejects_bad_values():
    good = dict(family="TriLM", size="s1", params=10, linear_params=8, bits=100.0, val_loss=3.0)
    SuiteEntry(**good)
    for change, match in [({"params": 0}, "params"), ({"linear_params": 2.5}, "linear_params"),
                          ({"bits": -1.0}, "bits"), ({"val_loss": float("nan")}, "val_loss"),
                          ({"family": ""}, "family"), ({"metrics": {"piqa": float("nan")}}, "metrics")]:
        with pytest.raises(ValueError, match=match):
            SuiteEntry(**(good | change))
    with pytest.raises(ValueError, match="unknown fields"):
        SuiteEntry.from_dict(good | {"loss": 3.0})
    with pytest.raises(ValueError, match="missing"):
        SuiteEntry.from_dict({k: v for k, v in good.items() if k != "bits"})


def test_load_suite_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no suite file"):
        load_suite(tmp_path)
    (tmp_path / "suite.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_suite(tmp_path)
    (tmp_path / "suite.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="no 'entries' list"):
        load_suite(tmp_path)


def test_zero_shot_average_needs_every_task_of_the_suite():
    entries = make_suite(0.5)
    partial = entries[0]
    partial.metrics.pop("arc_easy")
    assert partial.value("zero_shot_avg") == pytest.approx(partial.metrics["piqa"])  # alone: its own tasks
    assert partial.value("zero_shot_avg", ["piqa", "arc_easy"]) is None  # in the suite: not comparable
    fits = fit_families(entries, "zero_shot_avg")
    assert fits["FloatLM"].n_points == 3 and fits["TriLM"].n_points == 4


def test_suite_entry_stores_plain_python_numbers():
    entry = SuiteEntry("TriLM", "s1", np.int64(10), np.int32(8), np.float32(100.0), np.float64(3.0),
                       {"piqa": np.float32(0.5)}, tokens=np.int64(1000), mfu=np.float32(0.25))
    data = json.loads(json.dumps(entry.to_dict()))  # numpy scalars would not serialize
    assert data["tokens"] == 1000 and data["params"] == 10 and data["mfu"] == 0.25
    with pytest.raises(ValueError, match="tokens"):
        SuiteEntry("TriLM", "s1", 10, 8, 100.0, 3.0, tokens=-5)


def test_entry_from_size_report_of_a_ternary_model():
    from tritium.eval.size import size_report
    from tritium.models import decoder_layout, tiny_model
    from tritium.quant.grids import TernaryGrid

    model = tiny_model("llama", seed=0)
    names = list(decoder_layout(model).quantizable_linears())
    report = size_report(model, TernaryGrid("absmean", group="tensor"), names)
    entry = SuiteEntry.from_size_report("TriLM", "tiny", report, 5.5, tokens=1000)
    assert entry.params == sum(p.numel() for p in model.parameters())
    assert entry.linear_params == report.linear_params and entry.bits == report.total_bits
    assert entry.bits < 16 * entry.params  # ternary linears are far below 16 bits each
