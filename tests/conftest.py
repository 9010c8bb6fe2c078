import os
from pathlib import Path

import pytest
import torch

from staged_splits import stage_splits
from tritium.models import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The CPU kernel's avx2 path rounds activations to int8, so a packed model there is close to, not equal to,
# its fake-quant float model, which many tests assert to 1e-4. Unless told otherwise, the suite runs the
# fastest exact path (avx512, else portable) in this process and in the CLI processes it starts;
# tests/kernels runs every path, avx2 included, explicitly.
if "TRITIUM_CPU_PATH" not in os.environ:
    from tritium.kernels.cpu import paths_for_flags
    from tritium.utils.hardware import cpu_flags

    os.environ["TRITIUM_CPU_PATH"] = "avx512" if "avx512" in paths_for_flags(cpu_flags()) else "portable"


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The staged data sets; tests that need them skip with a reason when absent."""
    env = os.environ.get("TRITIUM_DATA")
    path = Path(env) if env else SHARED_DATA
    if not (path / "wikitext-2-raw-v1" / "wiki.test.raw").is_file():
        pytest.skip(f"no data sets at {path}: set TRITIUM_DATA")
    return path


# Enough text for a few perplexity chunks and calibration samples of a tiny model.
TINY_TEXT = " ".join(f"The quick brown fox number {i} jumps over the lazy dog." for i in range(300))


@pytest.fixture
def restore_cpu_path():
    """Back to the kernel path the session runs (pinned above to an exact one), not to the automatic choice."""
    from tritium.kernels.cpu import active_path, set_cpu_path

    before = active_path()
    yield
    if before != "reference":
        set_cpu_path(before)


@pytest.fixture
def tiny_folder(tmp_path, tokenizer):
    """A tiny random Llama saved as a Hugging Face folder with the tiny tokenizer."""
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A WikiText-2 folder of repeated tiny text (test and valid splits), set as $TRITIUM_DATA."""
    wiki = tmp_path / "data" / "wikitext-2-raw-v1"
    wiki.mkdir(parents=True)
    (wiki / "wiki.test.raw").write_text(TINY_TEXT)
    (wiki / "wiki.valid.raw").write_text(TINY_TEXT)
    monkeypatch.setenv("TRITIUM_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def staged(tmp_path, monkeypatch):
    """A tmp folder shaped like ../shared/data (WikiText-2 test and valid, a PIQA validation file), set as
    $TRITIUM_DATA, with the fingerprint cache in tmp too."""
    return stage_splits(tmp_path, monkeypatch)
