-- Hard spend limits per project and spend alerts per project or organization (storage/metadata_spend.py).
-- Amounts are US cents per calendar month (UTC); a month's spend is computed from the usage rows and the
-- configured prices when read (api/spend/). An alert remembers the month it last fired for (fired_month, the
-- month's first second), so it fires once a month however many API processes see it crossed.
CREATE TABLE spend_limits (
    project_id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    threshold_amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    period TEXT NOT NULL
);

CREATE TABLE spend_alerts (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    project_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    threshold_amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    period TEXT NOT NULL,
    notification_channel JSONB NOT NULL,
    fired_month BIGINT
);
CREATE INDEX spend_alerts_scope ON spend_alerts (organization_id, project_id, created_at, id);
