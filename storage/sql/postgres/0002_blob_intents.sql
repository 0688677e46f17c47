-- A blob being written before the row that makes it visible is committed. The row's transaction deletes
-- the intent; an intent left behind marks an orphan (the writer crashed) that the sweeper deletes.
CREATE TABLE blob_intents (
    key TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE INDEX blob_intents_created ON blob_intents (created_at);
