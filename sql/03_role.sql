-- A least-privilege role for outboxd.
--
--   LOGIN REPLICATION  needed to open a replication connection and stream from the slot
--   SELECT on outbox   needed for the publication's checks and `outboxd status`
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

-- Only if outboxd's own [cleanup] runs as this role (it deletes delivered rows in batches):
-- grant delete on public.outbox to outboxd;
