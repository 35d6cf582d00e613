-- The preference pairs against the candidates' ground truth (`candidate_truth`: key, shard,
-- candidate, kind, registered by the caller): how often the chosen caption is the true one,
-- how many chosen captions are planted hallucinations, pairs under the margin ($min_margin),
-- and references to an image or a caption that does not exist.
WITH labelled AS (
    SELECT
        p.*,
        tc.kind AS chosen_kind,
        tr.kind AS rejected_kind,
        EXISTS (SELECT 1 FROM samples AS s
                WHERE s.key = p.key AND s.shard = p.shard AND s.image_status = 'ok') AS image_exists,
        EXISTS (SELECT 1 FROM caption_candidates AS c
                WHERE c.key = p.key AND c.shard = p.shard AND c.candidate = p.chosen) AS chosen_exists,
        EXISTS (SELECT 1 FROM caption_candidates AS c
                WHERE c.key = p.key AND c.shard = p.shard AND c.candidate = p.rejected) AS rejected_exists
    FROM preference_pairs AS p
    LEFT JOIN candidate_truth AS tc ON tc.key = p.key AND tc.shard = p.shard AND tc.candidate = p.chosen
    LEFT JOIN candidate_truth AS tr ON tr.key = p.key AND tr.shard = p.shard AND tr.candidate = p.rejected
)
SELECT
    count(*) AS pairs,
    count(DISTINCT (shard, key)) AS images,
    avg((chosen_kind = 'true')::INTEGER) AS chosen_true_share,
    count(*) FILTER (chosen_kind IN ('wrong_colour', 'wrong_shape', 'absent_object')) AS chosen_hallucinated,
    count(*) FILTER (chosen_kind = 'wrong_colour') AS chosen_wrong_colour,
    count(*) FILTER (chosen_kind = 'wrong_shape') AS chosen_wrong_shape,
    count(*) FILTER (chosen_kind = 'absent_object') AS chosen_absent_object,
    count(*) FILTER (chosen_kind IS NOT NULL AND chosen_kind NOT IN
                     ('true', 'wrong_colour', 'wrong_shape', 'absent_object')) AS chosen_bad_alt_text,
    count(*) FILTER (chosen_kind IS NULL) AS chosen_without_truth,
    count(*) FILTER (rejected_kind = 'true') AS rejected_true,
    count(*) FILTER (margin < $min_margin) AS below_margin,
    count(*) FILTER (NOT image_exists) AS dangling_images,
    count(*) FILTER (NOT chosen_exists OR NOT rejected_exists) AS dangling_captions
FROM labelled;
