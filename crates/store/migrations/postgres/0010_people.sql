-- People named on a task beyond its template's (uTask's per-task resolvers and watchers):
-- {"resolvers": [...], "watchers": [...]}. Not sealed: access checks read it.
ALTER TABLE tasks ADD COLUMN people TEXT NOT NULL DEFAULT '{}';
