-- Comments people leave on a task (µTask's task comments); `content` is sealed. Removed with
-- their task.
CREATE TABLE task_comments (
    id         TEXT PRIMARY KEY,   -- UUIDv7: orders by time
    task_id    TEXT NOT NULL,
    author     TEXT NOT NULL,
    content    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX task_comments_task ON task_comments (task_id, id);
