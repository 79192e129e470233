-- When a fire's transaction committed (unix ms, by the database's clock). `received_at` is
-- stamped before the write, so a fire whose commit waited (on a lock, or in an instance that
-- froze mid-write) would look on time; schedule lateness is measured to `committed_at`.
-- Scheduled fires get it at the commit itself, from a deferred trigger (it runs as the
-- transaction commits, after every statement of it); other fires as they are written, in a
-- batch that commits right after. Fires recorded before this migration have none.
ALTER TABLE fires ADD COLUMN committed_at BIGINT;

CREATE FUNCTION taskhook_fire_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE fires SET committed_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
  WHERE id = NEW.id;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER fires_committed_at AFTER INSERT ON fires
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (NEW.scheduled_for IS NOT NULL)
  EXECUTE FUNCTION taskhook_fire_committed();
