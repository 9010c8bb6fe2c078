"""Documents, the one reader: which files a source names and the text each holds.

Pretraining ingest (:mod:`tritium.data.tokens`) and training data (:mod:`tritium.train.data`) both read
their documents here, so a folder means the same files to both: text, reST, Markdown, HTML, jsonl
and parquet files, folders and globs of them, Debian documentation packages (``.deb``, read in
Python) and ``hf:`` datasets. Evaluation test splits are refused by name here and by content in
:mod:`tritium.data.contamination`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from ..utils.errors import TritiumError
from ..utils.io import TextDecodeError, read_utf8, undecodable_message
from .contamination import check_documents, file_memo_key

TEXT_DOC_SUFFIXES = (".txt", ".rst", ".md", ".text", ".raw")
HTML_SUFFIXES = (".html", ".htm")
DEB_SUFFIX = ".deb"
SPHINX_SOURCES = "_sources"
ASSET_DIRS = {"_static", "_images"}  # Sphinx's scripts, styles and pictures, never prose
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
HF_PREFIX = "hf:"


class TrainDataError(TritiumError, ValueError):
    """Training data that cannot be used; the message says what to change."""



# --------------------------------------------------------------------------- HTML to text


class _HtmlText(HTMLParser):
    """The readable text of a page: navigation, sidebars, scripts and styles dropped, paragraphs kept."""

    SKIP_TAGS = {"script", "style", "head", "nav", "noscript", "template", "svg", "form", "button", "select"}
    SKIP_ROLES = {"navigation", "search"}
    SKIP_CLASSES = {"sphinxsidebar", "related", "footer", "headerlink", "mobile-nav", "menu-wrapper"}
    PARAGRAPH_TAGS = {"p", "div", "section", "article", "main", "aside", "blockquote", "pre", "table", "ul", "ol",
                      "dl", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "title", "body"}
    LINE_TAGS = {"br", "li", "tr", "dt", "dd", "figcaption", "caption"}
    VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_tag: str | None = None  # the element being skipped, and how deeply it nests in itself
        self.skip_depth = 0
        self.pre_depth = 0

    def _skipped(self, tag: str, attrs) -> bool:
        if tag in self.SKIP_TAGS:
            return True
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        return attrs.get("role") in self.SKIP_ROLES or bool(classes & self.SKIP_CLASSES)

    def _break(self, text: str) -> None:
        if self.parts and not self.parts[-1].endswith(text):
            self.parts.append(text)

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            # count only the skipped tag itself: other tags may omit their end tags (<p>, <li>)
            self.skip_depth += tag == self.skip_tag
            return
        if tag not in self.VOID_TAGS and self._skipped(tag, attrs):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "pre":
            self.pre_depth += 1
        if tag in self.PARAGRAPH_TAGS:
            self._break("\n\n")
        elif tag in self.LINE_TAGS:
            self._break("\n")

    def handle_startendtag(self, tag, attrs):
        if self.skip_tag is None and tag in self.LINE_TAGS | self.PARAGRAPH_TAGS:
            self._break("\n")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        if tag in self.PARAGRAPH_TAGS:
            self._break("\n\n")
        elif tag in self.LINE_TAGS:
            self._break("\n")

    def handle_data(self, data):
        if self.skip_tag is not None:
            return
        if not self.pre_depth:
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith("\n"):
                data = data.lstrip()
        if data:
            self.parts.append(data)

    def text(self) -> str:
        lines = [line.rstrip() for line in "".join(self.parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def html_to_text(html: str) -> str:
    """Plain text of an HTML page, with blank lines between paragraphs and code blocks verbatim."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return parser.text()


# --------------------------------------------------------------------------- choosing and reading files


def _doc_kind(name: str) -> str | None:
    suffix = PurePosixPath(name.lower()).suffix
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in TEXT_DOC_SUFFIXES:
        return "text"
    return None


def select_documents(paths: Iterable[str]) -> list[str]:
    """The prose files among ``paths`` (relative POSIX paths of a package or folder), in sorted order.

    Sphinx builds ship every page twice, as HTML and as its reST source under ``_sources/``; below
    a folder that has ``_sources`` the HTML is skipped, so no page is read twice (the generated
    pages with no source, indexes and search, are link lists). Assets (scripts, styles, images,
    inventories) and compressed files are never documents.
    """
    paths = sorted(set(paths))
    sphinx_roots = set()
    for p in paths:
        parts = PurePosixPath(p).parts
        if SPHINX_SOURCES in parts:
            sphinx_roots.add(parts[: parts.index(SPHINX_SOURCES)])
    chosen = []
    for p in paths:
        parts = PurePosixPath(p).parts
        kind = _doc_kind(p)
        if kind is None or ASSET_DIRS & set(parts[:-1]):
            continue
        if kind == "html" and any(parts[:i] in sphinx_roots for i in range(len(parts))):
            continue
        chosen.append(p)
    return chosen


def _open_ar_member(path: Path, prefix: str) -> tuple[str, bytes]:
    """The first member of the ar archive ``path`` whose name starts with ``prefix``, read whole."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise TrainDataError(f"{path} is not a Debian package (no ar archive header): pass a .deb file")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            if header[58:60] != b"`\n":
                raise TrainDataError(f"{path} is a corrupt Debian package (bad ar member header): download it again")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip() or 0)
            if name.startswith(prefix):
                body = f.read(size)
                if len(body) < size:
                    raise TrainDataError(f"{path} is truncated ({name} is cut short): download it again")
                return name, body
            f.seek(size + size % 2, os.SEEK_CUR)  # members start on even offsets
    raise TrainDataError(f"{path} holds no {prefix}* member: is it a Debian binary package?")


def _data_tar(path: Path) -> tarfile.TarFile:
    name, body = _open_ar_member(path, "data.tar")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as err:
            raise TrainDataError(
                f"{path} compresses its files with zstd, which this Python's tarfile cannot read: "
                "run `pip install zstandard`, or convert it with `dpkg-deb -R` and pass the folder") from err
        body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
    try:
        return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    except tarfile.TarError as err:
        raise TrainDataError(f"{path}: cannot read its {name} ({err}); the package may be corrupt") from err


def deb_documents(path: Path) -> Iterator[str]:
    """The documentation pages of a Debian package, as plain text, without installing it."""
    with _data_tar(path) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        chosen = set(select_documents(members))
        if not chosen:
            raise TrainDataError(f"{path} ships no text, reST, Markdown or HTML documentation")
        # archive order: a compressed tar seeks backwards only by decompressing again from the start
        for name, member in members.items():
            if name in chosen:
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                yield html_to_text(text) if _doc_kind(name) == "html" else text


def folder_files(folder: Path) -> list[Path]:
    """Documents and data files below ``folder``; symbolic links are not followed (packages use them for aliases)."""
    relative = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            full = Path(root) / name
            if not full.is_symlink():
                relative.append(full.relative_to(folder).as_posix())
    data = [p for p in relative if PurePosixPath(p).suffix.lower() in JSONL_SUFFIXES + PARQUET_SUFFIXES
            and not ASSET_DIRS & set(PurePosixPath(p).parts)]
    files = [folder / p for p in sorted(set(select_documents(relative)) | set(data))]
    if not files:
        raise TrainDataError(f"the folder {folder} holds no text, reST, Markdown, HTML, jsonl or parquet file")
    return files


def expand_sources(sources: Iterable[str], data_path=None) -> list[str]:
    """Every file (or ``hf:`` spec) the sources name, in order; missing ones fail before any work is done."""
    out: list[str] = []
    for source in sources:
        source = str(source)
        if source.startswith(HF_PREFIX):
            out.append(source)
            continue
        path = Path(os.path.expandvars(source)).expanduser()
        if path.is_dir():
            files = folder_files(path)
        elif path.is_file():
            files = [path]
        else:
            files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not files:
                raise TrainDataError(f"{source!r} was not found (no such file, folder or glob match)")
        refuse_test_splits(files, data_path)
        out += [str(f) for f in files]
    if not out:
        raise TrainDataError("no data given: pass text, HTML, jsonl or parquet files, folders, .deb packages or hf: specs")
    return out


def item_documents(item: str, text_field: str) -> Iterator[str]:
    if item.startswith(HF_PREFIX):
        yield from hf_documents(item, text_field)
        return
    path = Path(item)
    if path.suffix.lower() == DEB_SUFFIX:
        yield from deb_documents(path)
    elif _doc_kind(path.name) == "html":
        yield html_to_text(path.read_text(encoding="utf-8", errors="replace"))
    else:
        yield from read_documents(path, text_field)


def check_sources(items: Iterable[str], text_field: str = "text", data_path=None) -> None:
    """Refuse expanded sources whose documents hold an evaluation split, by content whatever the file is
    called (:mod:`tritium.data.contamination`). Only reads; a source found clean once is remembered."""
    for item in items:
        if item.startswith(HF_PREFIX):
            what, memo = f"the training data {item!r}", f"{item}:{text_field}"
        else:
            what, memo = f"the training file {Path(item).resolve()}", file_memo_key(item, text_field)
        check_documents(item_documents(item, text_field), what, data_path, "training", memo_key=memo)


def check_readable(items: Iterable[str], text_field: str = "text") -> None:
    """Read every document of the expanded local sources once, so that a file that does not decode as text (or a
    jsonl line without its field) fails now rather than midway through tokenizing; ``hf:`` specs are the datasets
    library's to read."""
    for item in items:
        if not item.startswith(HF_PREFIX):
            for _ in item_documents(item, text_field):
                pass


def iter_documents(sources: Iterable[str], text_field: str = "text", data_path=None) -> Iterator[str]:
    """The documents of every source, streamed: one per text/HTML file, jsonl line, parquet row or package page.

    Every source is checked for evaluation text before the first document comes out, so a test split
    fails before any tokenizer is trained or any token written."""
    items = expand_sources(sources, data_path)
    check_sources(items, text_field, data_path)
    for item in items:
        yield from item_documents(item, text_field)



def refuse_test_splits(files: list[Path], data_path=None) -> None:
    """Training on an evaluation test split would inflate every reported score."""
    from .sources import DATASETS, find_data_file

    for name, spec in DATASETS.items():
        if "test" not in spec.files:
            continue
        test_file = find_data_file(name, "test", data_path)
        for f in files:
            if (test_file is not None and f.resolve() == test_file.resolve()) or \
                    (f.name == spec.files["test"] and f.parent.name == spec.folder):
                raise TrainDataError(
                    f"{f} is the {name} test split, which the perplexity evaluation reads: never train on it. "
                    f"Use the validation split ({spec.files.get('valid', 'another file')}) or other text."
                )


def read_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The documents of one file: a whole text file, or one per jsonl line / parquet row."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        with open(path, "rb") as f:
            # bytes.splitlines breaks at \n, \r\n and \r, as text mode's universal newlines did: each
            # line is decoded alone, so an error names its line
            lines = (piece for chunk in f for piece in chunk.splitlines())
            for number, raw in enumerate(lines, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise TextDecodeError(undecodable_message(f"{path}:{number}", "training text file", err)) from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TrainDataError(f"{path}:{number} is not valid JSON ({err.msg}); fix or remove that line") from err
                if not isinstance(row, dict) or text_field not in row:
                    raise TrainDataError(f"{path}:{number} has no {text_field!r} field; set text_field to the right key")
                yield str(row[text_field])
    elif suffix in PARQUET_SUFFIXES:
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise TrainDataError(f"reading {path} needs pyarrow: run `pip install pyarrow`") from err
        columns = pq.read_schema(path).names  # pyarrow's own error for a missing column lists its internal fields
        if text_field not in columns:
            raise TrainDataError(f"{path} has no {text_field!r} column; its columns are {columns}: rename the text "
                                 f"column to {text_field!r}, or pass text_field= the right one")
        table = pq.read_table(path, columns=[text_field])
        # a null row is no document (str() would make it the text "None")
        yield from (str(t) for t in table.column(text_field).to_pylist() if t is not None)
    else:
        yield read_utf8(path, "training text file")


def hf_documents(spec: str, text_field: str) -> Iterator[str]:
    """``hf:<path>[:<config>]:<split>``, read with the datasets library (needs network or its cache)."""
    parts = spec[len(HF_PREFIX):].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise TrainDataError(f"{spec!r}: write an HF dataset as hf:<path>:<split> or hf:<path>:<config>:<split>")
    path, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    if split.startswith("test"):
        raise TrainDataError(f"{spec!r} is a test split: never train on evaluation data; use train or validation")
    try:
        import datasets
    except ImportError as err:
        raise TrainDataError(f"{spec!r} needs the datasets library: run `pip install datasets`") from err
    from ..utils.progress import follow_progress_switch

    follow_progress_switch(datasets)  # --no-progress reaches its download bars
    try:
        rows = datasets.load_dataset(path, config, split=split)
    except Exception as err:  # no network, unknown set: say so plainly
        raise TrainDataError(f"could not load {spec!r} from the HF hub ({type(err).__name__}: {str(err)[:200]}). "
                             "Without network access, pass local text, jsonl or parquet files.") from err
    if text_field not in rows.column_names:
        raise TrainDataError(f"{spec!r} has no column {text_field!r}; its columns are {rows.column_names}")
    yield from (str(t) for t in rows[text_field])


def eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainDataError("the tokenizer has no end-of-text token to separate documents; set tokenizer.eos_token")
    return int(eos)
