-- The scored pool read once into memory, for a connection that queries it many times (a
-- subset's step, an audit's step). DuckDB resolves a name in the temp schema before the
-- main one, so every later query and view on this connection that says `scores` reads
-- this table instead of joining the lake's score files again.
CREATE TEMP TABLE scores AS SELECT * FROM main.scores;
