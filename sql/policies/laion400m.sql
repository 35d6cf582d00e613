-- laion400m: the LAION-400M filter (laion.ai, 2021).
-- Keep pairs whose CLIP image-text cosine similarity is at least 0.3 (OpenAI ViT-B/32)
-- and whose NSFW probability is below 0.5.
-- Parameters below are the published ViT-B/32 values; a model's calibration file
-- (models/demo/calibration.json for the demo model) or run config can replace them.
SET VARIABLE min_similarity = 0.3;
SET VARIABLE max_punsafe = 0.5;

SELECT key, shard
FROM scores
WHERE similarity >= getvariable('min_similarity')
  AND punsafe < getvariable('max_punsafe');
