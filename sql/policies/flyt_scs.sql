-- flyt_scs: FLYT's released recipe (Shechter & Carmon, 2025): Soft Cap Sampling over the
-- learned FLYT score (flyt_scores, from the flyt_scorer asset). The scores are logits, as
-- FLYT's are (temperature 1); penalty 0.15, as many draws as the pool, batches of 0.078%.
-- In the flyt group: `clipsieve materialize --flyt` builds it.
SET VARIABLE sampling = 'soft_cap';
SET VARIABLE repetition_penalty = 0.15;
SET VARIABLE total_size_share = 1.0;
SET VARIABLE batch_share = 0.00078;
SET VARIABLE temperature = 1.0;
SET VARIABLE sampling_seed = 0;

SELECT s.key, s.shard, f.flyt AS score
FROM scores AS s
JOIN flyt_scores AS f USING (shard, key);
