-- Bytes of an upload's declared size claimed by a part while it streams in, so that parts sent at once cannot
-- together store more than the upload declared. The part's row replaces its claim when it commits; a failed
-- part drops it; the claims of a finished upload are dropped with it (a crashed writer's claim lapses then).
CREATE TABLE upload_reservations (
    part_id TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    bytes INTEGER NOT NULL
);
CREATE INDEX upload_reservations_upload ON upload_reservations (upload_id);
