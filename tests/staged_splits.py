"""Tiny staged evaluation splits for the test-split content checks (tritium.data.contamination)."""

import json
import random

VOCABULARY = [f"w{i}" for i in range(400)] + ["the", "of", "and", "a", "in", "to", "was", "is", "for", "on"]


def paragraphs(seed: int, n: int, words: int = 60) -> list[str]:
    """Seeded random prose: independent seeds share no 13-word sequence, as two real texts would not."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCABULARY) for _ in range(words)) + " ." for _ in range(n)]


def wikitext_file(rows: list[str]) -> str:
    """WikiText-2's layout: a heading, then paragraphs separated by blank lines, each with a leading space."""
    return " = Heading = \n\n" + "".join(f" {row}\n\n" for row in rows)


def stage_splits(tmp_path, monkeypatch):
    """A tmp folder shaped like ../shared/data (WikiText-2 test and valid, a PIQA validation file), set as
    $TRITIUM_DATA, with the fingerprint cache in tmp too."""
    data = tmp_path / "data"
    wiki = data / "wikitext-2-raw-v1"
    wiki.mkdir(parents=True)
    (wiki / "wiki.test.raw").write_text(wikitext_file(paragraphs(1, 80)))
    (wiki / "wiki.valid.raw").write_text(wikitext_file(paragraphs(2, 80)))
    piqa = data / "piqa"
    piqa.mkdir()
    rng = random.Random(3)
    rows = [{"goal": " ".join(rng.choice(VOCABULARY) for _ in range(8)),
             "sol1": " ".join(rng.choice(VOCABULARY) for _ in range(15)),
             "sol2": " ".join(rng.choice(VOCABULARY) for _ in range(15))} for _ in range(150)]
    (piqa / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (piqa / "valid-labels.lst").write_text("0\n" * len(rows))
    monkeypatch.setenv("TRITIUM_DATA", str(data))
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path / "cache"))
    return data
