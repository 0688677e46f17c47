-- Hard spend limits per organization (storage/metadata_spend.py), beside the projects' in spend_limits: US cents
-- per calendar month (UTC), enforced over the sum of the organization's projects' spend (api/spend/quota.py).
CREATE TABLE organization_spend_limits (
    organization_id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    threshold_amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    period TEXT NOT NULL
);
