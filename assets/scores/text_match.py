"""Whole-word phrase matching of captions against a term list, shared by `toxicity`'s
flagged terms and `concepts`' MetaCLIP entries.

A caption matches an entry when " entry " is a substring of the caption lower-cased with
punctuation padded to spaces (MetaCLIP's rule for whole-word entries). Matching looks up
every word n-gram of the caption (n up to the longest entry) in a hash table of the
entries, so the cost grows with caption length, not with the number of entries
(MetaCLIP's list has 500k).
"""

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)
_PUNCTUATION_RE2 = r"[^\p{L}\p{N}_\s]"


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
    """Finds the entries in a whole column of captions at once (Arrow kernels, no Python loop
    per caption): every word n-gram of every caption is built as one array per n and looked
    up in the entry list with a hash join (`index_in`)."""

    def __init__(self, terms: list[str]):
        ids: dict[str, int] = {}
        for i, term in enumerate(terms):
            ids.setdefault(term, i)
        self.terms = pa.array(list(ids), pa.string())
        self.term_ids = np.array(list(ids.values()), np.int32)
        self.longest = max((len(t.split()) for t in terms), default=1)

    def match(self, text: str | None) -> list[int]:
        """Ids of the entries found in `text`, each once, in order of first appearance."""
        return self.match_all(pa.array([text], pa.string()))[0].as_py()

    def match_all(self, captions: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """For each caption, the ids of the entries it contains, each once, ordered by where
        they first appear (then shorter first)."""
        if isinstance(captions, pa.ChunkedArray):
            captions = captions.combine_chunks() if captions.num_chunks else pa.array([], pa.string())
        # Python's [^\w\s] in RE2 terms; other Unicode spaces become ASCII spaces, same split.
        text = pc.replace_substring_regex(pc.utf8_lower(pc.fill_null(captions.cast(pa.string()), "")),
                                          _PUNCTUATION_RE2, " ")
        words = pc.utf8_split_whitespace(text)
        flat = words.flatten()
        row = np.asarray(pc.list_parent_indices(words), np.int64)
        found_rows, found_starts, found_lengths, found_ids = [], [], [], []
        for n in range(1, self.longest + 1):
            starts = np.flatnonzero(row[: len(row) - n + 1] == row[n - 1:]) if len(row) >= n else np.zeros(0, np.int64)
            if not len(starts):
                break
            parts = [flat.take(pa.array(starts + offset)) for offset in range(n)]
            grams = parts[0] if n == 1 else pc.binary_join_element_wise(*parts, " ")
            position = pc.index_in(grams, value_set=self.terms)
            hit = np.flatnonzero(np.asarray(pc.is_valid(position)))
            found_rows.append(row[starts[hit]])
            found_starts.append(starts[hit])
            found_lengths.append(np.full(len(hit), n))
            found_ids.append(self.term_ids[np.asarray(position.take(pa.array(hit)), np.int64)])
        rows = np.concatenate(found_rows) if found_rows else np.zeros(0, np.int64)
        ids = np.concatenate(found_ids) if found_ids else np.zeros(0, np.int32)
        order = np.lexsort((np.concatenate(found_lengths), np.concatenate(found_starts), rows)) if found_rows \
            else np.zeros(0, np.int64)
        rows, ids = rows[order], ids[order]
        # Keep each (caption, entry) once: its first appearance.
        _, first = np.unique(rows * (1 << 32) + ids.astype(np.int64), return_index=True)
        keep = np.sort(first)
        rows, ids = rows[keep], ids[keep]
        offsets = np.searchsorted(rows, np.arange(len(captions) + 1)).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int32()))
