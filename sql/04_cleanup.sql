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
--   select outboxd_cleanup(interval '7 days');          -- default batches of 1000
--   select outboxd_cleanup(interval '7 days', 5000);

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
         where ctid in (select ctid from public.outbox
                         where created_at < now() - older_than
                         limit batch_size);
        get diagnostics n = row_count;
        deleted := deleted + n;
        exit when n < batch_size;
    end loop;
    return deleted;
end
$$;
