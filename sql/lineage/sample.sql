-- One crawl row by key: its shard, tar member, url, caption and status.
SELECT * FROM samples WHERE key = $key;
