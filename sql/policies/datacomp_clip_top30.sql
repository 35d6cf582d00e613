-- datacomp_clip_top30: DataComp's best single baseline: the basic filter, then the top
-- 30% of the remaining pool by CLIP similarity (DataComp ranks by L/14 similarity; here
-- the configured model's). Ties at the cut are broken by key, so the subset is stable.
SET VARIABLE language = 'en';
SET VARIABLE min_words = 3;
SET VARIABLE min_chars = 6;
SET VARIABLE min_side = 200;
SET VARIABLE max_aspect_ratio = 3.0;
SET VARIABLE top_fraction = 0.3;

WITH basic AS (
    SELECT key, shard, similarity
    FROM scores
    WHERE language = getvariable('language')
      AND caption_words >= getvariable('min_words')
      AND caption_chars >= getvariable('min_chars')
      AND min_side >= getvariable('min_side')
      AND aspect_ratio <= getvariable('max_aspect_ratio')
)
SELECT key, shard
FROM basic
QUALIFY row_number() OVER (ORDER BY similarity DESC, shard, key)
        <= ceil(getvariable('top_fraction') * count(*) OVER ());
