-- A least-privilege role for outboxd.
--
--   LOGIN REPLICATION  needed to open a replication connection and stream from the slot
--   SELECT on outbox   needed for the publication's checks and `outboxd status`
--   outboxd_kept       INSERT/SELECT: rows dead-lettered without their value (see below)
--   nothing else       not a superuser, cannot create databases or roles
--
-- The password comes from a psql variable, never from this file:
--   psql -v outboxd_password="$OUTBOXD_DB_PASSWORD" -f sql/03_role.sql
-- Keep the password in a secret store; give it to outboxd with OUTBOXD_POSTGRES_URL or
-- [postgres] password_file. Also allow the role in pg_hba.conf for both the database and
-- replication connections, e.g.:
--   host  app          outboxd  10.0.0.0/8  scram-sha-256
--   host  replication  outboxd  10.0.0.0/8  scram-sha-256
-- (outboxd uses replication=database connections, which match the database name, but
-- older tooling uses the `replication` keyword; listing both is harmless.)
-- Idempotent: creates the role if missing, then (re)sets its attributes and password.

\if :{?outboxd_password}
\else
\echo 'set the password: psql -v outboxd_password=... -f sql/03_role.sql'
\quit
\endif

select format('create role outboxd login replication nosuperuser nocreatedb nocreaterole')
 where not exists (select 1 from pg_roles where rolname = 'outboxd') \gexec

alter role outboxd with login replication nosuperuser nocreatedb nocreaterole password :'outboxd_password';

grant usage on schema public to outboxd;
grant select on public.outbox to outboxd;

-- outboxd's own bookkeeping tables (sql/04_cleanup.sql, or `outboxd setup`), when they exist:
--   [cleanup] deletes delivered rows, and reads where the slot started and which rows to keep;
--   the dead-letter policy records rows it dead-lettered without their value.
-- Add -v outboxd_cleanup=on to grant what [cleanup] needs. Run this file again after those tables
-- are created (it is idempotent); `outboxd check` names any grant still missing.
select format('grant insert, select on public.outboxd_kept to outboxd')
 where to_regclass('public.outboxd_kept') is not null \gexec

\if :{?outboxd_cleanup}
grant delete on public.outbox to outboxd;
select format('grant select on public.outboxd_slot to outboxd')
 where to_regclass('public.outboxd_slot') is not null \gexec
\endif
