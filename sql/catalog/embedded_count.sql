-- How many samples the catalog's model has embedded: read from the keys files' Parquet
-- metadata, without scanning the scores.
SELECT count(*) FROM embeddings_index;
