-- When a fire's transaction committed (unix ms). `received_at` is stamped before the write;
-- schedule lateness is measured to `committed_at`. The one writer thread stamps it as it
-- writes the fire, in the batch it commits right after. Older fires have none.
ALTER TABLE fires ADD COLUMN committed_at INTEGER;
