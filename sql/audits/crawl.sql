-- What happened to every crawl row before scoring: the denominator of every audit.
-- Crawl rows are the parquet's; tar members no parquet row claims are counted apart.
SELECT
    count(*) FILTER (WHERE parquet_row IS NOT NULL) AS crawl_rows,
    count(*) FILTER (WHERE image_status = 'ok') AS usable,
    count(*) FILTER (WHERE status <> 'success') AS failed_download,
    count(*) FILTER (WHERE image_status = 'corrupt_image') AS corrupt_image,
    count(*) FILTER (WHERE image_status = 'missing_image') AS missing_image,
    count(*) FILTER (WHERE parquet_row IS NULL) AS tar_only
FROM samples;
