"""Labelled downstream data: what FLYT's scorer learns to serve, and what the downstream proxy
measures a subset's model on (zero-shot classification, as DataComp's evaluation suite).

A downstream set is one Parquet file: `image` (encoded bytes), `label` (an index into the
class names), with the class names and zero-shot templates in the file's metadata. A user
brings their own (an ImageNet-style folder converted to this layout); the sample crawl's
world gets one from the scene generator (`clipsieve downstream-data`): the class is the
object's colour and shape ("a red star"), with seeds the crawl (0), the demo model's
training (1000-3000) and each other never use: FLYT's training set and the proxy's
held-out set are two seeds.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from assets.demo import synthetic

TRAINING_SEED = 5000  # the FLYT scorer's downstream set
HELDOUT_SEED = 6000  # the proxy's evaluation set
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {} on a background.")
_METADATA_KEY = b"clipsieve.downstream"


@dataclass(frozen=True)
class DownstreamSet:
    """Labelled images with the names and templates of their classes."""
    images: list[bytes]
    labels: np.ndarray  # int64, one per image
    classes: list[str]
    templates: list[str]  # each with one "{}" for a class name

    def __len__(self) -> int:
        return len(self.images)

    def prompts(self) -> list[list[str]]:
        """Per class, its name in every template."""
        return [[template.format(name) for template in self.templates] for name in self.classes]


def scene_classes() -> list[str]:
    """The generator's classes: every object colour with every shape."""
    return [f"{colour} {shape}" for colour in synthetic.OBJECT_COLOURS for shape in synthetic.SHAPES]


def generate_scenes(count: int, seed: int, size: int = 96) -> DownstreamSet:
    """`count` scenes of one object kind each (no person, no watermark), JPEG encoded."""
    classes = scene_classes()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        scene = synthetic.random_scene(rng, person_rate=0.0)
        image = synthetic.render(scene, size, size, rng)
        images.append(synthetic.jpeg_bytes(image, quality=int(rng.integers(80, 96))))
        labels.append(classes.index(f"{scene.colour} {scene.shape}"))
    return DownstreamSet(images, np.array(labels, np.int64), classes, list(TEMPLATES))


def write_downstream(data: DownstreamSet, path: Path) -> Path:
    """Write `data` to `path` (a Parquet file, written whole then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image": pa.array(data.images, pa.binary()), "label": pa.array(data.labels, pa.int64())})
    metadata = {_METADATA_KEY: json.dumps({"classes": data.classes, "templates": data.templates}).encode()}
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table.replace_schema_metadata(metadata), partial)
    partial.replace(path)
    return path


def read_downstream(path: str | Path) -> DownstreamSet:
    """A downstream set written by `write_downstream` (or in its layout)."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(_METADATA_KEY)
    if raw is None or not {"image", "label"} <= set(table.column_names):
        raise ValueError(f"{path}: not a downstream set (image and label columns, classes and templates in "
                         "its metadata)")
    described = json.loads(raw)
    labels = table.column("label").to_numpy().astype(np.int64)
    classes, templates = list(described["classes"]), list(described["templates"])
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(classes):
        raise ValueError(f"{path}: a label is outside its {len(classes)} classes")
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"{path}: every template needs exactly one {{}} for the class name")
    return DownstreamSet(table.column("image").to_pylist(), labels, classes, templates)
