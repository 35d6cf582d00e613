-- samples: one row per crawl parquet row, failed downloads included, then one row per tar
-- member no parquet row claims (parquet_row null).
-- Columns: the crawl's own (key, url, caption, status, error_message, width, height,
-- original_width, original_height, sha256, uid, ...) plus parquet_row, shard, tar_member,
-- image_bytes, image_status, image_error, caption_error and row_warnings (see assets/samples.py).
CREATE OR REPLACE VIEW samples AS
SELECT *
FROM read_parquet('{{lake}}/shards/*/samples.parquet', union_by_name = true);
