-- One crawl row by key: its shard, tar member, url, caption and status. A crawl can hold a
-- key twice (a duplicate row, a tar-only row): the usable row comes first, then parquet order.
SELECT * FROM samples WHERE key = $key ORDER BY image_status = 'ok' DESC, parquet_row NULLS LAST;
