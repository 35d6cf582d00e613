-- Samples in the scored pool, the denominator of a subset's kept share.
SELECT count(*) AS n FROM scores;
