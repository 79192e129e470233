-- Why a BLOCKED task is blocked, as a short code an operator can list by (`crashed`,
-- `crash_loop`, `failed_steps`, `retry_max`, `deadlock`, `template`); the full reason is in
-- the task's audit trail. Set when a run ends BLOCKED, cleared when the task moves on.
ALTER TABLE tasks ADD COLUMN blocked_reason TEXT;
