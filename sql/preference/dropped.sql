-- What a shard's preference pairs left out, and why (needs ranked, verdicts and the pairs
-- as `pairs`): images a rule stopped (candidate null), candidates over the model's token
-- limit, and candidates of a paired image that are in no pair.
SELECT key, shard, NULL::VARCHAR AS candidate, reason,
       printf('ptext %.3f, best %.3f, runner-up %.3f, %d ranked candidates',
              ptext, best, runner_up, ranked_candidates) AS detail
FROM verdicts
WHERE reason IS NOT NULL
UNION ALL
SELECT key, shard, candidate, 'over_token_limit' AS reason,
       printf('%d tokens, over the model''s %d', tokens, getvariable('context_length')) AS detail
FROM candidates
WHERE over_token_limit
UNION ALL
SELECT r.key, r.shard, r.candidate,
       CASE WHEN v.best - r.similarity < getvariable('min_margin') THEN 'within_margin_of_best'
            ELSE 'over_max_pairs' END AS reason,
       printf('similarity %.3f, best %.3f', r.similarity, v.best) AS detail
FROM ranked AS r
JOIN verdicts AS v ON v.key = r.key AND v.reason IS NULL
WHERE NOT EXISTS (SELECT 1 FROM pairs AS p
                  WHERE p.key = r.key AND r.candidate_id IN (p.chosen_id, p.rejected_id))
ORDER BY key, candidate NULLS FIRST;
