-- preference_pairs: (chosen, rejected) captions per image with both similarities and the
-- margin, as the preference_pairs asset made them (assets/preference/pairs.py has the rules).
CREATE OR REPLACE VIEW preference_pairs AS
SELECT p.key, p.shard, p.pair, p.chosen, p.rejected, p.chosen_similarity, p.rejected_similarity, p.margin,
       p.chosen_sources, p.rejected_sources, p.ptext, s.url, s.uid, s.tar_member
FROM read_parquet('{{lake}}/shards/*/preference/{{model}}/pairs.parquet') AS p
LEFT JOIN (SELECT * FROM samples WHERE image_status = 'ok') AS s USING (shard, key)
WHERE p.shard IN (SELECT shard FROM pool_shards);
