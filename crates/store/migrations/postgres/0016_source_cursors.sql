-- Where a polling source (a hook's `git` source) has got to, and which instance polls it.
-- `owner` holds the lease until `lease_until` (unix ms); `cursor` (a JSON object) is written
-- only by the lease holder, in the same transaction as the fire it comes with. Removed with
-- the hook.
CREATE TABLE source_cursors (
    hook_group  TEXT NOT NULL,
    hook_id     TEXT NOT NULL,
    source_key  TEXT NOT NULL,
    owner       TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    cursor      TEXT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (hook_group, hook_id, source_key),
    FOREIGN KEY (hook_group, hook_id) REFERENCES hooks (hook_group, hook_id) ON DELETE CASCADE
);
