-- PostgreSQL mirror of migrations/sqlite/0001_init.sql. JSON columns stay TEXT so both
-- backends store the same serialisation; times are unix ms (BIGINT), set by the program.
-- Keys that are sorted or compared use the "C" collation: byte order, as SQLite sorts them.

-- Templates: the current version of each, and every version a task may have pinned.
CREATE TABLE template_versions (
    name        TEXT COLLATE "C" NOT NULL,
    version     BIGINT NOT NULL,
    body        TEXT NOT NULL,          -- the template as JSON
    created_at  BIGINT NOT NULL,        -- unix ms
    PRIMARY KEY (name, version)
);

CREATE TABLE templates (
    name        TEXT COLLATE "C" PRIMARY KEY,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE tasks (
    id               TEXT COLLATE "C" PRIMARY KEY,   -- UUIDv7, time-ordered
    template         TEXT COLLATE "C" NOT NULL,
    template_version BIGINT NOT NULL,
    title            TEXT NOT NULL,
    state            TEXT NOT NULL,
    inputs           TEXT NOT NULL,
    resolver_inputs  TEXT NOT NULL DEFAULT '{}',
    result           TEXT NOT NULL DEFAULT 'null',
    tags             TEXT NOT NULL DEFAULT '{}',
    requester        TEXT NOT NULL,
    parent_id        TEXT COLLATE "C",
    idempotency_key  TEXT COLLATE "C",
    run_count        BIGINT NOT NULL DEFAULT 0,
    run_max          BIGINT NOT NULL,
    -- when the engine should next run this task; NULL when nothing is scheduled
    due_at           BIGINT,
    lease_owner      TEXT,
    lease_epoch      BIGINT NOT NULL DEFAULT 0,
    lease_until      BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (template, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_due ON tasks (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_template ON tasks (template, id);
CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;

-- One row per step: a step's change rewrites its row, never the whole task.
CREATE TABLE steps (
    task_id        TEXT COLLATE "C" NOT NULL,
    name           TEXT COLLATE "C" NOT NULL,
    state          TEXT NOT NULL,
    output         TEXT NOT NULL DEFAULT 'null',
    metadata       TEXT NOT NULL DEFAULT 'null',
    error          TEXT,
    attempts       BIGINT NOT NULL DEFAULT 0,
    next_retry_at  BIGINT,
    foreach_parent TEXT,
    item           TEXT,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (task_id, name)
);

-- The audit trail: every task transition and every human action.
CREATE TABLE task_events (
    seq        BIGSERIAL PRIMARY KEY,  -- grows with each insert
    task_id    TEXT COLLATE "C" NOT NULL,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT,
    detail     TEXT NOT NULL DEFAULT 'null'
);
CREATE INDEX task_events_task ON task_events (task_id, seq);

CREATE TABLE settings (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
