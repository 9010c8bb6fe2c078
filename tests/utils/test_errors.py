"""Every user-facing error class is a TritiumError, and the CLI turns one into exit 2 with its message."""

import importlib

import pytest

from tritium import TritiumError

USER_ERRORS = [
    ("tritium.calib.capture", "CalibrationInputError"), ("tritium.calib.capture", "NonFiniteError"),
    ("tritium.data.calibration", "CalibrationError"), ("tritium.data.sources", "DataNotFoundError"),
    ("tritium.eval.perplexity", "EvalInputError"), ("tritium.export.codes", "CodesError"),
    ("tritium.export.gguf", "GGUFExportError"), ("tritium.export.gguf_tensors", "GGUFTypeError"),
    ("tritium.models.adapters", "UnsupportedArchitectureError"), ("tritium.models.loader", "ModelSourceError"),
    ("tritium.models.spectra", "SpectraConfigError"), ("tritium.pack.layouts", "PackError"),
    ("tritium.quant.grids", "QuantConfigError"), ("tritium.recipes", "RecipeError"),
    ("tritium.runtime.fast_decode", "UnsupportedForFastDecode"), ("tritium.train.data", "TrainDataError"),
    ("tritium.utils.integrity", "DamagedFileError"), ("tritium.utils.integrity", "InconsistentFolderError"),
    ("tritium.train.losses", "DistillationInputError"), ("tritium.train.trainer", "TrainConfigError"),
    ("tritium.utils.runs", "RunFolderError"), ("tritium.utils.runs", "RunFolderBusyError"),
    ("tritium.runtime.fast_decode", "ContextLimitError"),
]


@pytest.mark.parametrize("module,name", USER_ERRORS)
def test_user_errors_share_the_base(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, TritiumError)


def test_cli_turns_a_tritium_error_into_exit_2(monkeypatch, capsys):
    from tritium import cli

    class OddInput(TritiumError):
        pass

    def failing(args):
        raise OddInput("the group size 100 does not divide 576; use --group 64")

    monkeypatch.setattr(cli, "cmd_info", failing)
    assert cli.main(["info", "--model", "whatever"]) == 2
    assert "the group size 100 does not divide 576" in capsys.readouterr().err


@pytest.mark.parametrize("error", [ZeroDivisionError, ValueError, KeyError])
def test_cli_shows_an_unexpected_error_as_a_bug_with_its_traceback(monkeypatch, capsys, error):
    from tritium import cli

    def broken(args):
        raise error("a bug, not an input")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(error):  # the traceback reaches the user (exit 1 from the entry point)
        cli.main(["info", "--model", "whatever"])
    assert "a bug in tritium rather than in your input" in capsys.readouterr().err


def test_the_entry_point_exits_1_with_the_traceback_and_the_bug_line(tmp_path):
    import subprocess
    import sys

    # the handler of `tritium info` replaced by one that fails as a bug would, then the real entry point
    script = ("import sys, tritium.cli as cli\n"
              "cli.cmd_info = lambda args: [][1]\n"
              "sys.argv = ['tritium', 'info', '--model', 'whatever']\n"
              "import runpy; runpy.run_module('tritium.cli', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "a bug in tritium rather than in your input" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "IndexError: list index out of range" in proc.stderr
