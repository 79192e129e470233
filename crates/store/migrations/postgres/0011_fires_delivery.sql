-- Delivery dedupe looks up the first fire of a delivery id in id order: with id in the
-- index it is one index probe, whatever the planner knows of the table's size.
DROP INDEX IF EXISTS fires_delivery;
CREATE INDEX fires_delivery ON fires (hook_group, hook_id, delivery_id, id) WHERE delivery_id IS NOT NULL;
