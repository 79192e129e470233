-- How many runs of a task in a row were cut off by the process stopping (a crash, a kill,
-- an out-of-memory kill): counted when a lease is recovered, cleared when a run ends or a
-- person moves the task. The engine blocks a task that reaches its limit instead of running
-- it again, so a task that takes the process down cannot do it forever.
ALTER TABLE tasks ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
