"""Near-duplicate search settings (the `dedup` resource), shared by its three steps.

The steps (assets/dedup/): centroids trained on a bounded sample of the pool, each shard's
samples assigned to them, and the pairwise search within clusters. Their files:

    dedup/<model>/centroids.json                        names centroids/<version>/{centroids,offsets}.npy
    shards/<shard>/dedup/<model>/assignment.parquet     key, shard, cluster, centroid_similarity;
                                                        commits versions/<v>/{vectors,rows}.npy
    shards/<shard>/dedup/<model>/duplicates.parquet     the pairwise step's groups, every sample
    dedup/<model>/state.json                            commits state/<v>/{pairs,groups}.parquet and names
                                                        base/<v>/ (the cluster-major copy of the vectors)
"""

from dataclasses import asdict, dataclass

from dagster import ConfigurableResource
from pydantic import Field

from resources.versions import text_digest

KEEP_RULES = ("first", "hard", "easy", "random")


@dataclass(frozen=True)
class DedupSettings:
    cluster_size: int = 200
    max_training_samples: int = 1_000_000
    eps: float = 0.1
    min_thumbnail_correlation: float = 0.975
    boundary_clusters: int = 1
    keep: str = "first"
    memory_budget_bytes: int = 1 << 30
    seed: int = 0
    duckdb_memory_limit: str = "1GB"
    balance_clusters: bool = False
    rebase_share: float = 0.1

    def __post_init__(self) -> None:
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {KEEP_RULES}, not {self.keep!r}")
        if not 0 <= self.rebase_share <= 1:
            raise ValueError(f"rebase_share must be in [0, 1], not {self.rebase_share}")
        if not 0 < self.eps < 2:
            raise ValueError(f"eps must be in (0, 2) (pairs have cosine >= 1 - eps), not {self.eps}")

    def digest(self, *names: str) -> str:
        """A digest of the named settings (all when none is named)."""
        values = asdict(self)
        return text_digest(repr(sorted((n, values[n]) for n in (names or values))))


class DedupResource(ConfigurableResource):
    """How near-duplicates are found (SemDeDup: k-means, then pairs within clusters)."""

    cluster_size: int = Field(default=200, description="Target samples per k-means cluster: the number of "
                              "clusters is the pool size over this. Pairwise work grows with it.")
    max_training_samples: int = Field(default=1_000_000, description="k-means trains on at most this many "
                                      "pool samples (drawn evenly from every shard; float16: 1 KiB each at "
                                      "512-d), whatever the pool size; it places at most 1/20 as many clusters "
                                      "(beyond, clusters grow and the pairwise step does more per sample).")
    eps: float = Field(default=0.1, description="Pairs with cosine >= 1 - eps are candidates (SemDeDup's epsilon). "
                       "The assignment's boundary visits use it too: after raising it, materialize "
                       "dedup_assignment again for every shard.")
    min_thumbnail_correlation: float = Field(
        default=0.975, description="Keep a candidate pair only if its 8x8 thumbnails correlate this much (0: off).")
    boundary_clusters: int = Field(default=1, description="A sample within the eps radius of the boundary with "
                                   "one of its next-nearest clusters is also compared with that cluster's samples "
                                   "(up to this many clusters), so a pair split by a cluster boundary is still "
                                   "found (SemDeDup compares within clusters only). 0: off.")
    keep: str = Field(default="first", description="Which sample of a duplicate group is kept: first (in shard, "
                      "key order), hard (farthest from its centroid, SemDeDup's default), easy (closest), random.")
    memory_budget_mb: int = Field(default=1024, description="Vectors the pairwise step holds at once: clusters are "
                                  "processed in groups that fit.")
    seed: int = Field(default=0, description="Seed of the training sample, k-means and the random keep rule.")
    duckdb_memory_limit: str = Field(default="1GB", description="DuckDB's memory_limit for the exact and "
                                     "perceptual hash matches (it spills past it): with the vector budget, "
                                     "what bounds the pairwise step's memory.")
    balance_clusters: bool = Field(default=False, description="Even the clusters out: offsets fitted on held-out "
                                   "samples keep the centroids nearest a region's middle from taking most of it "
                                   "(only when the pool is larger than max_training_samples). At 10M synthetic "
                                   "samples the pairwise step ran twice as fast and a new shard's 22% faster, and "
                                   "found 9.5% fewer semantic duplicates (smaller clusters split more pairs). "
                                   "Changing it trains the centroids again.")
    rebase_share: float = Field(default=0.1, description="The pairwise step keeps a cluster-major copy of the "
                                "assigned vectors, so that after a new shard it reads only the clusters that "
                                "shard touches. Shards assigned since it was written are read from their own "
                                "files; once they hold more than this share of the pool's rows, the step reads "
                                "every cluster and writes the copy again.")

    def settings(self) -> DedupSettings:
        return DedupSettings(self.cluster_size, self.max_training_samples, self.eps, self.min_thumbnail_correlation,
                             self.boundary_clusters, self.keep, self.memory_budget_mb * 2**20, self.seed,
                             self.duckdb_memory_limit, self.balance_clusters, self.rebase_share)
