-- The outbox table (outboxd's default columns, the same names Debezium's outbox event router uses).
--
-- Applications INSERT one row per event in the SAME transaction as their business change, and
-- nothing else: never UPDATE or DELETE outbox rows (outboxd only forwards committed INSERTs; old rows
-- are removed by outboxd's [cleanup] or by sql/04_cleanup.sql, never by the application).
--
--   id             the event id, chosen by the application (consumers deduplicate on it)
--   aggregatetype  routes the event: topic outbox.event.<aggregatetype> by default
--   aggregateid    the Kafka key, so one aggregate's events stay on one partition, in order
--   type           the event type, sent as a header
--   payload        the Kafka value, bytes exactly as stored; NULL is a tombstone only when enabled
--   created_at     for cleanup and for reconciling after a failover
--
-- Other column names work too: set them under [outbox] in outboxd's configuration.
-- Idempotent: safe to apply again.

create table if not exists public.outbox (
    id            uuid primary key,
    aggregatetype text        not null,
    aggregateid   text        not null,
    type          text        not null,
    payload       jsonb,
    created_at    timestamptz not null default now()
);

-- Cleanup deletes by age; this keeps it from scanning the whole table.
create index if not exists outbox_created_at_idx on public.outbox (created_at);
