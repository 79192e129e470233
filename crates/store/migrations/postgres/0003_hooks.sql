-- Hooks: bindings from triggers to templates. `body` is the hook document as JSON.
CREATE TABLE hooks (
    hook_group         TEXT COLLATE "C" NOT NULL,
    hook_id            TEXT COLLATE "C" NOT NULL,
    body               TEXT NOT NULL,
    -- secret for POST .../trigger/{token}
    trigger_token      TEXT NOT NULL,
    -- the newest due time a schedule fired (unix ms), so a restart neither repeats nor misses
    last_scheduled_for BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (hook_group, hook_id)
);

-- The fire ledger: every event that reached a hook, committed with the task it created.
CREATE TABLE fires (
    id            TEXT COLLATE "C" PRIMARY KEY,      -- UUIDv7
    hook_group    TEXT COLLATE "C" NOT NULL,
    hook_id       TEXT COLLATE "C" NOT NULL,
    fired_by      TEXT NOT NULL,
    received_at   BIGINT NOT NULL,
    scheduled_for BIGINT,
    result        TEXT NOT NULL,         -- created, filtered, declined, rejected, error, skipped, queued
    task_id       TEXT COLLATE "C",
    error         TEXT,
    delivery_id   TEXT,
    payload       TEXT
);

-- A due time fires once per hook, however many schedulers race for it.
CREATE UNIQUE INDEX fires_schedule ON fires (hook_group, hook_id, scheduled_for) WHERE scheduled_for IS NOT NULL;
CREATE INDEX fires_delivery ON fires (hook_group, hook_id, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX fires_hook ON fires (hook_group, hook_id, id);
CREATE INDEX fires_queued ON fires (hook_group, hook_id, id) WHERE result = 'queued';
