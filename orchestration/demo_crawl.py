"""The `demo_crawl` job: writes the sample crawl (assets/demo/sample_crawl.py) from the UI.

A job, not an asset: it writes the pipeline's input, so it stays out of the asset graph and
of "Materialize all", and it refuses a folder holding anything it did not write.
"""

import os

from dagster import Config, OpExecutionContext, Output, job, op
from pydantic import Field

from assets.definitions.partitions import shard_partitions
from assets.demo.sample_crawl import DEFECT_RATE, shard_name, write_sample_crawl


class SampleCrawlConfig(Config):
    out: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_CRAWL", "data/sample_crawl"),
        description="Folder to write the crawl to (default: $CLIPSIEVE_CRAWL). It must be empty, new, or an "
                    "earlier sample crawl: a folder with other files (a real crawl) is refused.",
    )
    shards: int = Field(default=8, description="Number of shards (tar + parquet + stats).")
    samples_per_shard: int = Field(default=250, description="Input rows per shard.")
    seed: int = Field(default=0, description="Seed; the same seed writes the same bytes.")
    near_duplicate_share: float = Field(
        default=DEFECT_RATE, description="Share of near-duplicate rows (0.03 like every defect; about 0.3 is "
        "LAION-2B's, Webster et al. 2023).")


@op(description="Write a synthetic img2dataset crawl with planted defects and ground truth, and register "
                "its shards as partitions.")
def write_demo_crawl(context: OpExecutionContext, config: SampleCrawlConfig) -> Output[None]:
    summary = write_sample_crawl(config.out, config.shards, config.samples_per_shard, config.seed,
                                 near_duplicate_share=config.near_duplicate_share)
    context.instance.add_dynamic_partitions(shard_partitions.name, [shard_name(s) for s in range(config.shards)])
    return Output(None, metadata={
        "path": config.out, "shards": summary["shards"], "samples": summary["samples"], "clean": summary["clean"],
        **{f"defect/{k}": v for k, v in summary["defects"].items()},
    })


@job(name="demo_crawl", description="The sample crawl, for the demo: then observe it and materialize.")
def demo_crawl() -> None:
    write_demo_crawl()
