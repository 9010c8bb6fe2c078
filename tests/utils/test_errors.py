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


def test_cli_shows_an_unexpected_error_as_a_bug_with_its_traceback(monkeypatch, capsys):
    from tritium import cli

    def broken(args):
        raise ZeroDivisionError("a bug, not an input")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(ZeroDivisionError):  # the traceback reaches the user (exit 1 from the entry point)
        cli.main(["info", "--model", "whatever"])
    assert "a bug in tritium rather than in your input" in capsys.readouterr().err
