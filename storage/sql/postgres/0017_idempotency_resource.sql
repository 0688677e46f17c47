-- The id of the object a request with an Idempotency-Key was about to commit (a file, a job, an upload or one of
-- its parts, an export), written with the request's fingerprint just before the commit (api/idempotency.py). A
-- retry that takes over the claim of a request that died after its commit but before its answer was kept finds
-- the object by it and answers with it instead of creating a second one.
ALTER TABLE idempotency_keys ADD COLUMN resource TEXT;
