-- The checkpoint table, for `[checkpoint] store = "postgres"` (several outboxd instances on one
-- slot, on any hosts): one row per slot with the end of the last delivered transaction and the
-- origin it belongs to (system identifier, timeline, database). `outboxd setup` creates it too.
-- The role outboxd connects as needs to read and write it (sql/03_role.sql's role: see the grant).
create table if not exists outboxd_checkpoint (
  slot                  text primary key,
  delivered_end_lsn     pg_lsn not null,
  last_event_id         text,
  last_event_commit_lsn pg_lsn,
  last_event_index      bigint,
  system_identifier     text,
  timeline              integer,
  database              text,
  written_at            timestamptz not null default now()
);

do $$
begin
  if exists (select 1 from pg_roles where rolname = 'outboxd') then
    grant select, insert, update on outboxd_checkpoint to outboxd;
  end if;
end
$$;
