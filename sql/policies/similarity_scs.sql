-- similarity_scs: FLYT's Soft Cap Sampling (Shechter & Carmon, 2025) over CLIP similarity.
-- Every scored sample is a candidate; batches of the pool are drawn from
-- softmax(similarity / temperature), each drawn sample's logit lowered by the penalty, until
-- as many draws as the pool has samples. A well-matched pair is drawn several times, a poor
-- one rarely or never: the subset is a multiset (members with draws).
-- FLYT's published parameters: penalty 0.15, total size = the pool, batches of 0.078% of
-- it. FLYT draws by its learned score; similarity / 0.01 is CLIP's own logit (logit scale
-- 100), the temperature that makes a cosine comparable to a logit.
SET VARIABLE sampling = 'soft_cap';
SET VARIABLE repetition_penalty = 0.15;
SET VARIABLE total_size_share = 1.0;
SET VARIABLE batch_share = 0.00078;
SET VARIABLE temperature = 0.01;
SET VARIABLE sampling_seed = 0;

SELECT key, shard, similarity AS score
FROM scores
WHERE similarity IS NOT NULL;
