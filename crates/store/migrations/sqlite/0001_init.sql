-- Templates: the current version of each, and every version a task may have pinned.
CREATE TABLE template_versions (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    body        TEXT NOT NULL,          -- the template as JSON
    created_at  INTEGER NOT NULL,       -- unix ms
    PRIMARY KEY (name, version)
) WITHOUT ROWID;

CREATE TABLE templates (
    name        TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,   -- UUIDv7, time-ordered
    template         TEXT NOT NULL,
    template_version INTEGER NOT NULL,
    title            TEXT NOT NULL,
    state            TEXT NOT NULL,
    inputs           TEXT NOT NULL,
    resolver_inputs  TEXT NOT NULL DEFAULT '{}',
    result           TEXT NOT NULL DEFAULT 'null',
    tags             TEXT NOT NULL DEFAULT '{}',
    requester        TEXT NOT NULL,
    parent_id        TEXT,
    idempotency_key  TEXT,
    run_count        INTEGER NOT NULL DEFAULT 0,
    run_max          INTEGER NOT NULL,
    -- when the engine should next run this task; NULL when nothing is scheduled
    due_at           INTEGER,
    lease_owner      TEXT,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_until      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE UNIQUE INDEX tasks_idempotency ON tasks (template, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_due ON tasks (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_template ON tasks (template, id);
CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;

-- One row per step: a step's change rewrites its row, never the whole task.
CREATE TABLE steps (
    task_id        TEXT NOT NULL,
    name           TEXT NOT NULL,
    state          TEXT NOT NULL,
    output         TEXT NOT NULL DEFAULT 'null',
    metadata       TEXT NOT NULL DEFAULT 'null',
    error          TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_retry_at  INTEGER,
    foreach_parent TEXT,
    item           TEXT,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (task_id, name)
) WITHOUT ROWID;

-- The audit trail: every task transition and every human action.
CREATE TABLE task_events (
    seq        INTEGER PRIMARY KEY,  -- rowid: grows with each insert
    task_id    TEXT NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT,
    detail     TEXT NOT NULL DEFAULT 'null'
);
CREATE INDEX task_events_task ON task_events (task_id, seq);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
