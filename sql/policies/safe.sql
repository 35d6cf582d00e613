-- safe: the strict policy. Everything the other policies filter (CLIP similarity,
-- DataComp's basic caption and image rules), plus no NSFW, no watermark, no toxic
-- caption, and one copy per duplicate group (near_duplicates keeps the first).
SET VARIABLE min_similarity = 0.3;
SET VARIABLE language = 'en';
SET VARIABLE min_words = 3;
SET VARIABLE min_chars = 6;
SET VARIABLE min_side = 200;
SET VARIABLE max_aspect_ratio = 3.0;
SET VARIABLE max_punsafe = 0.5;
SET VARIABLE max_pwatermark = 0.8;
SET VARIABLE max_toxicity = 0.5;
SET VARIABLE max_flagged_terms = 0;

SELECT s.key, s.shard
FROM scores AS s
JOIN duplicates AS d USING (shard, key)
WHERE s.similarity >= getvariable('min_similarity')
  AND s.language = getvariable('language')
  AND s.caption_words >= getvariable('min_words')
  AND s.caption_chars >= getvariable('min_chars')
  AND s.min_side >= getvariable('min_side')
  AND s.aspect_ratio <= getvariable('max_aspect_ratio')
  AND s.punsafe < getvariable('max_punsafe')
  AND s.pwatermark < getvariable('max_pwatermark')
  AND s.toxicity < getvariable('max_toxicity')
  AND s.flagged_terms <= getvariable('max_flagged_terms')
  AND NOT d.is_duplicate;
