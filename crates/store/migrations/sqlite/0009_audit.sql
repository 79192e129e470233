-- The audit log of API calls that could change something (every method but GET, HEAD and
-- OPTIONS, and every trigger), refused ones included. Task state changes stay in
-- task_events; the audit view reads both.
CREATE TABLE audit_calls (
    id      TEXT PRIMARY KEY,       -- UUIDv7, time-ordered
    at      INTEGER NOT NULL,       -- unix ms
    actor   TEXT NOT NULL,          -- admin, a token's name, hook:<group>/<id>, anonymous
    action  TEXT NOT NULL,          -- method and route pattern: POST /api/v1/tasks
    target  TEXT,                   -- template name, task id, group/id, ...
    status  INTEGER NOT NULL,       -- HTTP status answered
    error   TEXT,                   -- for failures: the problem's title and detail
    client  TEXT                    -- the client's address
) WITHOUT ROWID;
CREATE INDEX audit_calls_at ON audit_calls (at, id);

-- The audit view pages task events by time as well.
CREATE INDEX task_events_at ON task_events (at, seq);
