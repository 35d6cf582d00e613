-- What happened to every crawl row before scoring: the denominator of every audit.
SELECT
    count(*) AS crawl_rows,
    count(*) FILTER (WHERE image_status = 'ok') AS usable,
    count(*) FILTER (WHERE status <> 'success') AS failed_download,
    count(*) FILTER (WHERE image_status = 'corrupt_image') AS corrupt_image,
    count(*) FILTER (WHERE image_status = 'missing_image') AS missing_image
FROM samples;
