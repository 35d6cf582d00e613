-- mflyt_scs: Soft Cap Sampling over M-FLYT's learned mix of the score columns (mflyt_scores,
-- from the flyt_mix asset), FLYT's best recipe on DataComp medium; parameters as flyt_scs.
SET VARIABLE sampling = 'soft_cap';
SET VARIABLE repetition_penalty = 0.15;
SET VARIABLE total_size_share = 1.0;
SET VARIABLE batch_share = 0.00078;
SET VARIABLE temperature = 1.0;
SET VARIABLE sampling_seed = 0;

SELECT s.key, s.shard, m.mflyt AS score
FROM scores AS s
JOIN mflyt_scores AS m USING (shard, key);
