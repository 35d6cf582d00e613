-- datacomp_basic: DataComp's "basic" filter (Gadre et al., 2023, Table 3).
-- English caption (fastText lid.176), more than 2 words and more than 5 characters,
-- shorter image side at least 200 px, aspect ratio at most 3.
-- min_side is a parameter because crawls differ in image size (the sample crawl's
-- images are 112-192 px; the demo calibration sets it to 64).
SET VARIABLE language = 'en';
SET VARIABLE min_words = 3;
SET VARIABLE min_chars = 6;
SET VARIABLE min_side = 200;
SET VARIABLE max_aspect_ratio = 3.0;

SELECT key, shard
FROM scores
WHERE language = getvariable('language')
  AND caption_words >= getvariable('min_words')
  AND caption_chars >= getvariable('min_chars')
  AND min_side >= getvariable('min_side')
  AND aspect_ratio <= getvariable('max_aspect_ratio');
