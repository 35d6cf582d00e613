"""Near-duplicates in three steps, each bounded in memory whatever the pool size:
centroids.py (spherical k-means on a bounded sample of the pool), assignment.py (each
shard's samples to their nearest centroid, their vectors written in cluster order) and
near_duplicates.py (pairs within clusters, a group of clusters at a time, folded with the
exact and perceptual hash matches into duplicate groups); pairs.py holds the in-memory
arithmetic the last step uses."""
