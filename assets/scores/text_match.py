"""Whole-word phrase matching of captions against a term list, shared by `toxicity`'s
flagged terms and `concepts`' MetaCLIP entries.

A caption matches an entry when " entry " is a substring of the caption lower-cased with
punctuation padded to spaces (MetaCLIP's rule for whole-word entries). Matching looks up
every word n-gram of the caption (n up to the longest entry) in a dict, so the cost grows
with caption length, not with the number of entries (MetaCLIP's list has 500k).
"""

import re
from pathlib import Path

_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)


def read_terms(path: str | Path) -> list[str]:
    """Entries of a term file: one per line, '#' lines and blanks skipped, normalized."""
    terms = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            terms.append(" ".join(normalize(line).split()))
    return terms


def normalize(text: str) -> str:
    return _PUNCTUATION.sub(" ", text.lower())


class PhraseMatcher:
    def __init__(self, terms: list[str]):
        self.ids: dict[str, int] = {}
        for i, term in enumerate(terms):
            self.ids.setdefault(term, i)
        self.longest = max((len(t.split()) for t in terms), default=1)

    def match(self, text: str | None) -> list[int]:
        """Ids of the entries found in `text`, each once, in order of first appearance."""
        words = normalize(text or "").split()
        found: dict[int, None] = {}
        for start in range(len(words)):
            for n in range(1, min(self.longest, len(words) - start) + 1):
                entry = self.ids.get(" ".join(words[start:start + n]))
                if entry is not None:
                    found.setdefault(entry, None)
        return list(found)
