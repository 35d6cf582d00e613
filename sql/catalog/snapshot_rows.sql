-- The rows of the snapshot just taken, for the process to keep.
SELECT * FROM temp.scores;
