-- The publication outboxd streams from.
--
-- publish = 'insert' only: outboxd forwards committed inserts and nothing else, and publishing
-- updates, deletes or truncates would make the walsender decode and send changes outboxd discards
-- (including every cleanup DELETE). Add further outbox tables with
--   alter publication outboxd add table <schema>.<table>;
-- Idempotent: creates the publication only if it does not exist (it does not change an existing one;
-- `outboxd check` reports one that publishes more than inserts).

do $$
begin
    if not exists (select 1 from pg_publication where pubname = 'outboxd') then
        create publication outboxd for table public.outbox with (publish = 'insert');
    end if;
end
$$;
