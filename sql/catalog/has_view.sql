-- Whether this connection has the view $name (an optional one, like flyt_scores, exists
-- only once its files do).
SELECT count(*) > 0 AS present FROM duckdb_views() WHERE view_name = $name;
