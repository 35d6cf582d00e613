"""caption_candidates: every candidate caption of a shard's usable images, with its CLIP
similarity to the image.

Candidates come from three places, deduplicated per image (one row per distinct text, its
sources joined): the alt-text (source `alt_text`), the crawl columns named in
PreferenceResource.extra_columns (source: the column's name), and the shard's
<shard>_candidates.parquet (key, candidate, source; source `candidates` where it has none).
Each is cleaned as captions are (surrounding whitespace stripped, cut to MAX_CAPTION_CHARS)
and its tokens counted without truncation: a candidate longer than the model's context
(77 tokens for OpenAI's CLIP) is kept and marked `over_token_limit`, never embedded cut
short. The others are embedded by the model that embedded the images, and scored.

The candidates file is untrusted like the rest of the crawl: a file that is not Parquet or
lacks its columns, a null or empty field, a key with no usable image are recorded with their
reason in candidate_errors.parquet, and the shard goes on with what is usable.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.crawl.reader import cap_caption
from assets.embeddings import encode_texts
from resources.clip_model import LoadedClip
from resources.crawl import CANDIDATES_SUFFIX, CrawlResource
from resources.embedding_files import load_image_embeddings, normalized
from resources.lake import LakeResource, preference_dir, samples_path, with_metadata

CODE_VERSION = "1"
CONTEXT_LENGTH_KEY = "clipsieve.context_length"  # candidates.parquet metadata: the model's token limit
ALT_TEXT = "alt_text"
SIDECAR_SOURCE = "candidates"  # the source of a candidates-file row that names none

CANDIDATE_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("candidate_id", pa.int32()), ("candidate", pa.string()),
    ("sources", pa.string()), ("tokens", pa.int32()), ("over_token_limit", pa.bool_()),
    ("similarity", pa.float32()),
])
ERROR_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("candidate", pa.string()),
                          ("source", pa.string()), ("reason", pa.string())])


@dataclass
class Candidates:
    table: pa.Table  # CANDIDATE_SCHEMA
    errors: pa.Table  # ERROR_SCHEMA


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens the model's tokenizer makes of `text`, with its start and end tokens, untruncated."""
    if hasattr(tokenizer, "encode"):  # open_clip's BPE tokenizer: the text's tokens, plus start and end
        return len(tokenizer.encode(text)) + 2
    return len(tokenizer.tokenizer(text)["input_ids"])  # a Hugging Face tokenizer adds its own


def _sidecar_rows(sidecar: pa.Table | None, shard: str, errors: list[dict]) -> list[tuple[str, str, str]]:
    """(key, text, source) of the candidates file's rows; unusable rows go to `errors`."""
    if sidecar is None:
        return []
    file = f"{shard}{CANDIDATES_SUFFIX}"
    problems = [f"no {c!r} column" for c in ("key", "candidate") if c not in sidecar.column_names]
    problems += [f"column {c!r} is {sidecar.schema.field(c).type}, not text" for c in ("key", "candidate", "source")
                 if c in sidecar.column_names and not pa.types.is_string(sidecar.schema.field(c).type)
                 and not pa.types.is_large_string(sidecar.schema.field(c).type)]
    if problems:
        errors.append({"key": None, "shard": shard, "candidate": None, "source": None,
                       "reason": f"{file}: {'; '.join(problems)}: no row of it read"})
        return []
    sources = (sidecar.column("source").to_pylist() if "source" in sidecar.column_names
               else [None] * sidecar.num_rows)
    rows = []
    for i, (key, text, source) in enumerate(zip(sidecar.column("key").to_pylist(),
                                                sidecar.column("candidate").to_pylist(), sources)):
        if key is None or text is None:
            errors.append({"key": key, "shard": shard, "candidate": text, "source": source,
                           "reason": f"row {i} of {file}: {'key' if key is None else 'candidate'} is null"})
            continue
        rows.append((key, text, source or SIDECAR_SOURCE))
    return rows


def gather(samples: pa.Table, embedded: set[str], sidecar: pa.Table | None,
           extra_columns: list[str], shard: str) -> tuple[dict[str, dict[str, list[str]]], list[dict]]:
    """Every candidate of the shard's embedded images: key -> {cleaned text -> sources}, in
    first-seen order (alt-text, extra columns, candidates file), and the rows left out."""
    errors: list[dict] = []
    usable = samples.filter(pc.equal(samples.column("image_status"), "ok"))
    keys = usable.column("key").to_pylist()
    found: dict[str, dict[str, list[str]]] = {k: {} for k in keys if k in embedded}
    rows = [(k, t, ALT_TEXT) for k, t in zip(keys, usable.column("caption").to_pylist())]
    for column in extra_columns:
        if column not in samples.column_names:  # crawls' shards need not agree on their columns
            errors.append({"key": None, "shard": shard, "candidate": None, "source": column,
                           "reason": f"extra column {column!r} is not in {shard}.parquet: no candidates from it"})
            continue
        values = usable.column(column)
        if not pa.types.is_string(values.type):
            values = values.cast(pa.string())
        rows += [(k, t, column) for k, t in zip(keys, values.to_pylist())]
    rows += _sidecar_rows(sidecar, shard, errors)
    statuses: dict[str, str] = {}  # a key's usable row wins over its duplicate_key rows
    for key, status in zip(samples.column("key").to_pylist(), samples.column("image_status").to_pylist()):
        if statuses.get(key) != "ok":
            statuses[key] = status
    for key, text, source in rows:
        if text is None:
            continue  # a missing alt-text or extra-column value: nothing to rank
        text, _ = cap_caption(text.strip())
        if key not in found:
            status = statuses.get(key)
            reason = ("key is not in the shard's samples" if status is None else
                      f"the image is not usable (image_status {status})" if status != "ok" else
                      "the image could not be embedded")
            errors.append({"key": key, "shard": shard, "candidate": text, "source": source, "reason": reason})
        elif not text:
            errors.append({"key": key, "shard": shard, "candidate": text, "source": source,
                           "reason": "empty candidate"})
        else:
            sources = found[key].setdefault(text, [])
            if source not in sources:
                sources.append(source)
    return found, errors


def score(found: dict[str, dict[str, list[str]]], shard: str, image_keys: list[str], image: np.ndarray,
          tokenizer: Any, context_length: int, encode: Callable[[list[str]], np.ndarray]) -> pa.Table:
    """The candidates as CANDIDATE_SCHEMA rows: tokens counted, those within the context
    embedded by `encode` and scored against the image embedding (`image`, rows of `image_keys`)."""
    row_of = {k: i for i, k in enumerate(image_keys)}
    keys, ids, texts, sources, tokens = [], [], [], [], []
    for key, candidates in found.items():
        for i, (text, where) in enumerate(candidates.items()):
            keys.append(key)
            ids.append(i)
            texts.append(text)
            sources.append(",".join(where))
            tokens.append(token_count(tokenizer, text))
    over = [t > context_length for t in tokens]
    within = [i for i, o in enumerate(over) if not o]
    similarity = np.full(len(texts), np.nan, np.float32)
    if within:
        embedded = encode([texts[i] for i in within])
        images = image[[row_of[keys[i]] for i in within]]
        similarity[within] = (embedded * images).sum(axis=1)
    return pa.table({
        "key": pa.array(keys, pa.string()), "shard": pa.array([shard] * len(keys), pa.string()),
        "candidate_id": pa.array(ids, pa.int32()), "candidate": pa.array(texts, pa.string()),
        "sources": pa.array(sources, pa.string()), "tokens": pa.array(tokens, pa.int32()),
        "over_token_limit": pa.array(over, pa.bool_()),
        "similarity": pa.array(similarity, pa.float32(), mask=np.array(over, bool)),
    }, schema=CANDIDATE_SCHEMA)


def errors_table(errors: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(errors, schema=ERROR_SCHEMA)


def write_candidates(crawl: CrawlResource, lake: LakeResource, shard: str, model_id: str, clip: LoadedClip,
                     batch_size: int, extra_columns: list[str]) -> Candidates:
    """Gather, count, embed and score the shard's candidates; write candidates.parquet and
    candidate_errors.parquet under preference_dir(shard, model_id)."""
    samples = lake.read_parquet(samples_path(shard))
    image_keys, image = load_image_embeddings(lake, shard, model_id)
    errors: list[dict] = []
    try:
        sidecar = crawl.read_candidates(shard)
    except (pa.ArrowException, OSError) as error:
        sidecar = None
        errors.append({"key": None, "shard": shard, "candidate": None, "source": None,
                       "reason": f"{shard}{CANDIDATES_SUFFIX} is not a readable parquet file: "
                                 f"{type(error).__name__}: {error}"})
    keys = image_keys.column("key").to_pylist()
    found, skipped = gather(samples, set(keys), sidecar, extra_columns, shard)
    table = score(found, shard, keys, normalized(image), clip.tokenizer, int(clip.tokenizer.context_length),
                  lambda texts: encode_texts(clip, texts, batch_size))
    result = Candidates(table, errors_table(errors + skipped))
    folder = preference_dir(shard, model_id)
    lake.write_parquet(f"{folder}/candidate_errors.parquet", result.errors)
    lake.write_parquet(f"{folder}/candidates.parquet",
                       with_metadata(result.table, {CONTEXT_LENGTH_KEY: str(clip.tokenizer.context_length)}))
    return result
