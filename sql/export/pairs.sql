-- Preference pairs as TRL's DPO trainer reads them (prompt, chosen, rejected, images), with
-- the crawl reference of the image and the figures behind each pair, for lineage.
SELECT
    $prompt AS prompt,
    chosen,
    rejected,
    [{'key': key, 'shard': shard, 'tar_member': tar_member, 'url': url}] AS images,
    key,
    shard,
    uid,
    pair,
    chosen_similarity,
    rejected_similarity,
    margin,
    ptext,
    chosen_sources,
    rejected_sources
FROM preference_pairs
ORDER BY shard, key, pair;
