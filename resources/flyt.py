"""FLYT settings (the `flyt` resource): where the scorer's downstream data and reference model
come from, and how long it trains (assets/flyt/).

Defaults are sized for a CPU and the sample crawl (batches of 64; FLYT used 4096 upstream and
3072 downstream pairs on GPUs). Each field's description names the variable that sets it.
"""

import os
from dataclasses import asdict, dataclass, fields

from dagster import ConfigurableResource
from pydantic import Field

from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL
from resources.versions import text_digest


@dataclass(frozen=True)
class FlytSettings:
    downstream: str = ""
    downstream_samples: int = 1000
    reference_model: str = DEMO_MODEL
    reference_checkpoint: str = DEMO_CHECKPOINT
    steps: int = 150
    upstream_batch: int = 64
    downstream_batch: int = 64
    scorer_lr: float = 1e-3
    inner: str = "adamw"
    reference_lr: float = 5e-5
    hidden: int = 256
    max_pairs: int = 100_000
    seed: int = 0
    retrain_growth: float = 0.5
    mix_columns: str = ("similarity,punsafe,pwatermark,aesthetic,flyt,toxicity,caption_words,min_side,aspect_ratio,"
                        "english")
    mix_weights: str = ""

    @property
    def mix_column_list(self) -> list[str]:
        return [c.strip() for c in self.mix_columns.split(",") if c.strip()]

    def digest(self, mix: bool = False) -> str:
        """What the scorer (or, `mix`, the M-FLYT mix) depends on: every setting but when to
        retrain, and the mix's own settings for the mix only."""
        skipped = {"retrain_growth"} | (set() if mix else {"mix_columns", "mix_weights"})
        values = {k: v for k, v in asdict(self).items() if k not in skipped}
        return text_digest(repr(sorted(values.items())))


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class FlytResource(ConfigurableResource):
    """How the FLYT scorer is trained: its downstream data, reference model and budget."""

    downstream: str = Field(
        default_factory=lambda: _env("CLIPSIEVE_FLYT_DOWNSTREAM", ""),
        description="The labelled downstream set the scorer learns to serve ($CLIPSIEVE_FLYT_DOWNSTREAM): a Parquet "
        "file of image, label with classes and templates in its metadata (`clipsieve downstream-data` writes "
        "one for the sample crawl's world). Empty: labelled scenes generated for the sample crawl.")
    downstream_samples: int = Field(default=1000, description="Scenes generated when no downstream set is given.")
    reference_model: str = Field(
        default_factory=lambda: _env("CLIPSIEVE_FLYT_REFERENCE_MODEL", DEMO_MODEL),
        description="open_clip architecture of the reference model the scorer steps "
        "($CLIPSIEVE_FLYT_REFERENCE_MODEL); FLYT used ViT-B-32.")
    reference_checkpoint: str = Field(
        default_factory=lambda: _env("CLIPSIEVE_FLYT_REFERENCE_CHECKPOINT", DEMO_CHECKPOINT),
        description="Its starting weights ($CLIPSIEVE_FLYT_REFERENCE_CHECKPOINT): a local checkpoint.")
    steps: int = Field(default_factory=lambda: int(_env("CLIPSIEVE_FLYT_STEPS", "150")),
                       description="Training steps ($CLIPSIEVE_FLYT_STEPS).")
    upstream_batch: int = Field(default=64, description="Pairs per step, weighted by the scorer (FLYT: 4096).")
    downstream_batch: int = Field(default=64, description="Labelled images per step (FLYT: 3072).")
    scorer_lr: float = Field(default=1e-3, description="The scorer's AdamW learning rate (FLYT's).")
    inner: str = Field(default="adamw", description="The reference's inner step: adamw (FLYT's, moments carried "
                       "from step to step) or sgd (a plain gradient step).")
    reference_lr: float = Field(default=5e-5, description="The inner step's learning rate (FLYT: 5e-5 with "
                                "AdamW; about 1e-3 for sgd on the demo model).")
    hidden: int = Field(default=256, description="Width of the scorer's SwiGLU block.")
    max_pairs: int = Field(default=100_000, description="Upstream pairs drawn evenly from the pool to train on "
                           "(their images are kept encoded: about 10 KB a pair).")
    seed: int = Field(default=0, description="Seed of the pair sample, the batches and the scorer's weights.")
    retrain_growth: float = Field(default=0.5, description="The scorer is kept, and the shards' FLYT scores stay "
                                  "fresh, until the pool has grown by this share since it was trained.")

    mix_columns: str = Field(
        default=FlytSettings.mix_columns, description="M-FLYT's inputs, comma-separated: any of similarity, punsafe, "
        "pwatermark, aesthetic, flyt, toxicity, caption_words, min_side, aspect_ratio, english.")
    mix_weights: str = Field(
        default_factory=lambda: _env("CLIPSIEVE_FLYT_MIX_WEIGHTS", ""),
        description="M-FLYT weights given in a JSON file ({columns, weights, optional mean, std, bias}; "
        "$CLIPSIEVE_FLYT_MIX_WEIGHTS) instead of trained.")

    def settings(self) -> FlytSettings:
        return FlytSettings(**{f.name: getattr(self, f.name) for f in fields(FlytSettings)})
