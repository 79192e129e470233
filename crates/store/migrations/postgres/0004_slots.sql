-- A pause or cancel asked while the task runs, for the instance holding the run; cleared when
-- the run ends (applied then, if the run did not apply it) or the task changes state.
ALTER TABLE tasks ADD COLUMN stop_to TEXT;
ALTER TABLE tasks ADD COLUMN stop_actor TEXT;

-- Slots of named resources held by running steps, shared by every instance using the store.
-- A slot is valid while its task is RUNNING at `epoch` and `until` (renewed with the lease)
-- has not passed.
CREATE TABLE resource_slots (
    resource TEXT COLLATE "C" NOT NULL,
    task_id  TEXT COLLATE "C" NOT NULL,
    step     TEXT COLLATE "C" NOT NULL,
    epoch    BIGINT NOT NULL,
    until    BIGINT NOT NULL,
    PRIMARY KEY (resource, task_id, step)
);
CREATE INDEX resource_slots_task ON resource_slots (task_id);
