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
