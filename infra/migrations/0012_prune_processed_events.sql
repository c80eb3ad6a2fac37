-- `tierflow db prune` deletes processed_events rows older than the retention, in batches: each
-- batch finds the oldest rows by this index instead of reading the whole table.
CREATE INDEX idx_processed_events_processed_at ON processed_events(processed_at);
