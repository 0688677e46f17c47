-- The checkpoint model a job with early stopping published as its fine-tuned model (the lowest full validation
-- loss), shown as the job's `best_checkpoint`; NULL for every other job.
ALTER TABLE jobs ADD COLUMN best_checkpoint TEXT;
