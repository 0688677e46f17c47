-- When a job first became `running` (its queue wait ends there), for the job metrics of /metrics.
ALTER TABLE jobs ADD COLUMN started_at INTEGER;
