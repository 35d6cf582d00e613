-- samples: one row per crawl parquet row, failed downloads included.
-- Columns: the crawl's own (key, url, caption, status, error_message, width, height,
-- original_width, original_height, sha256, uid, ...) plus shard, tar_member,
-- image_bytes, image_status and image_error (see assets/samples.py).
CREATE OR REPLACE VIEW samples AS
SELECT *
FROM read_parquet('{{lake}}/shards/*/samples.parquet', union_by_name = true);
