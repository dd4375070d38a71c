-- The inbox of a consuming service: the consumer half of the outbox pattern (crates/outbox-inbox).
--
-- Apply in the CONSUMER's database (where its business tables live), not in the database outboxd
-- reads from. The library's `setup` function runs this same file.
--
-- inbox            one row per message a consumer has taken: claimed with
--                  INSERT .. ON CONFLICT DO NOTHING in the same transaction as the message's
--                  effect, so the effect happens once per (consumer, message_id) however often the
--                  broker re-delivers the message.
--   consumer       the consuming service (usually its Kafka group id or queue name)
--   message_id     the event id (outboxd's `id` header)
--   processed_at   when the claim committed; purge deletes by it
--   aggregate_id   the aggregate (outboxd's record key), when known
--   lsn, event_index
--                  the event's position (outboxd's `outboxd.lsn` and `outboxd.index` headers)
--   outcome        'processed', or 'stale' for an event the aggregate guard refused (its effect was
--                  never applied; the row keeps the refusal visible and the id deduplicated)
--
-- inbox_aggregate  the aggregate guard: for each (consumer, aggregate) the position of the last event
--                  applied. An event at or before it is stale. One row per aggregate, never purged by
--                  age: forgetting it would let a stale re-delivery through.
--
-- Unqualified names: the tables go to the first schema of the connection's search_path.
-- Idempotent: safe to apply again.

create table if not exists inbox (
    consumer     text        not null,
    message_id   text        not null,
    processed_at timestamptz not null default now(),
    aggregate_id text,
    lsn          pg_lsn,
    event_index  bigint,
    outcome      text        not null default 'processed' check (outcome in ('processed', 'stale')),
    primary key (consumer, message_id)
);

-- Purge deletes by age, in batches; this keeps each batch from scanning the table.
create index if not exists inbox_processed_at_idx on inbox (processed_at);

create table if not exists inbox_aggregate (
    consumer     text        not null,
    aggregate_id text        not null,
    lsn          pg_lsn      not null,
    event_index  bigint      not null,
    message_id   text        not null,
    updated_at   timestamptz not null default now(),
    primary key (consumer, aggregate_id)
);
