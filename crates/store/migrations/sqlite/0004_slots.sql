-- A pause or cancel asked while the task runs, for the instance holding the run; cleared when
-- the run ends (applied then, if the run did not apply it) or the task changes state.
ALTER TABLE tasks ADD COLUMN stop_to TEXT;
ALTER TABLE tasks ADD COLUMN stop_actor TEXT;

-- Slots of named resources held by running steps, shared by every process using the store.
-- A slot is valid while its task is RUNNING at `epoch` and `until` (renewed with the lease)
-- has not passed.
CREATE TABLE resource_slots (
    resource TEXT NOT NULL,
    task_id  TEXT NOT NULL,
    step     TEXT NOT NULL,
    epoch    INTEGER NOT NULL,
    until    INTEGER NOT NULL,
    PRIMARY KEY (resource, task_id, step)
) WITHOUT ROWID;
CREATE INDEX resource_slots_task ON resource_slots (task_id);
