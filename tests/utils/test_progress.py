"""One switch hides every progress bar: tritium's and the libraries'."""

import io

from tritium.utils.progress import progress_bar, progress_bars_enabled, set_progress_bars


def test_the_switch_reaches_tritium_s_bars_and_transformers_and_the_hub_s():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    try:
        set_progress_bars(False)
        stream = io.StringIO()
        assert list(progress_bar(range(3), desc="x", file=stream)) == [0, 1, 2]
        assert stream.getvalue() == "" and not progress_bars_enabled()
        assert not transformers_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    finally:
        set_progress_bars(True)
    assert transformers_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    stream = io.StringIO()
    list(progress_bar(range(3), desc="x", file=stream))
    assert "3/3" in stream.getvalue()
    stream = io.StringIO()
    list(progress_bar(range(3), desc="x", file=stream, enabled=False))  # a caller's own switch still holds
    assert stream.getvalue() == ""


def test_the_switch_silences_transformers_gguf_reader_which_calls_tqdm_directly(tmp_path, capfd):
    from tritium.export.gguf import write_gguf
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import load_model, tiny_model, tiny_tokenizer
    from tritium.quant import TernaryGrid

    model = tiny_model("llama", seed=4, hidden_size=256, intermediate_size=384)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    path = tmp_path / "tiny.gguf"
    write_gguf(model, path, result.weights, "tq1_0", tokenizer=tiny_tokenizer())
    capfd.readouterr()
    try:
        set_progress_bars(False)
        load_model(path)
        assert "GGUF tensors" not in capfd.readouterr().err
    finally:
        set_progress_bars(True)
    import transformers.modeling_gguf_pytorch_utils as gguf_reader
    from tqdm.auto import tqdm

    assert gguf_reader.tqdm is tqdm  # restored after the load
    load_model(path)
    assert "GGUF tensors" in capfd.readouterr().err  # the oracle: with bars on, the reader's bar shows
