-- laion2b_en: the English part of LAION-5B (Schuhmann et al., 2022).
-- Keep English captions (CLD3 there, fastText lid.176 here) whose CLIP ViT-B/32
-- similarity is at least 0.28.
SET VARIABLE min_similarity = 0.28;
SET VARIABLE language = 'en';

SELECT key, shard
FROM scores
WHERE similarity >= getvariable('min_similarity')
  AND language = getvariable('language');
