-- Deleting old outbox rows, for operators who schedule cleanup themselves (cron, pg_cron).
--
-- outbox rows are only needed until outboxd has delivered them (and for a while after, to
-- reconcile after a failover). This function deletes rows older than `older_than`, in batches of
-- `batch_size` so that locks and WAL bursts stay small, and returns how many it deleted.
--
-- IMPORTANT: it knows nothing about delivery. Call it only with an `older_than` far longer than
-- outboxd's delivery lag (`outboxd status` shows the lag; alert on it). Deleting a row outboxd has
-- not yet streamed does not lose the event (logical decoding reads the WAL, not the table), but a
-- row is also your record for reconciliation. outboxd's own [cleanup] is safer: it deletes only rows
-- whose transactions the slot has confirmed as delivered.
--
-- Like outboxd's [cleanup], it never deletes:
--   * rows created before the newest slot start recorded in outboxd_slot (`outboxd setup` records
--     it when it creates a slot): a backlog written before the slot existed was never streamed;
--   * rows listed in outboxd_kept: outboxd dead-lettered them without their value (too large or
--     malformed), so the row holds the only copy of the payload. Delete those by hand once handled.
-- The two tables are created here as `outboxd setup` creates them (in the outbox table's schema).
-- outboxd's role needs insert on outboxd_kept and select on outboxd_slot when [cleanup] runs.
--
--   select outboxd_cleanup(interval '7 days');          -- default batches of 1000
--   select outboxd_cleanup(interval '7 days', 5000);

create table if not exists public.outboxd_slot (
    slot_name   text primary key,
    created_xid xid8 not null,
    created_at  timestamptz not null,
    created_lsn pg_lsn
);

create table if not exists public.outboxd_kept (
    slot_name text not null,
    event_id  text not null,
    reason    text not null,
    kept_at   timestamptz not null default now(),
    primary key (slot_name, event_id)
);

create or replace function outboxd_cleanup(older_than interval, batch_size int default 1000)
returns bigint
language plpgsql
as $$
declare
    deleted bigint := 0;
    n       bigint;
begin
    if older_than < interval '1 hour' then
        raise exception 'outboxd_cleanup: older_than % is too short to be safe (at least 1 hour)', older_than;
    end if;
    loop
        delete from public.outbox
         where ctid in (select ctid from public.outbox o
                         where created_at < now() - older_than
                           and created_at > coalesce((select max(created_at) from public.outboxd_slot),
                                                     '-infinity')
                           and not exists (select 1 from public.outboxd_kept k where k.event_id = o.id::text)
                         limit batch_size);
        get diagnostics n = row_count;
        deleted := deleted + n;
        exit when n < batch_size;
    end loop;
    return deleted;
end
$$;
