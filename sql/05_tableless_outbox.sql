-- The table-less outbox: an event as a transactional logical message instead of a row.
--
-- Nothing is stored in a table (no cleanup needed); the event exists only in the WAL. outboxd
-- forwards messages whose prefix equals [postgres] message_prefix (set message_prefix = "outboxd"),
-- with the same fields as the table's columns in a JSON object. The publication must still exist
-- (sql/02_publication.sql): replication needs one, even if no table in it is ever written.
--
-- transactional MUST be true: the message is then decoded with its transaction, in commit order,
-- and only if the transaction commits. Non-transactional messages (false) are never forwarded.
--
-- Who may emit: PostgreSQL lets every role (PUBLIC) call pg_logical_emit_message, so with
-- message_prefix set anyone who can connect could publish records under outboxd's identity.
-- Run this file once as a superuser with the role your application writes events as:
--   psql -d app -v ON_ERROR_STOP=1 -v outbox_writer=app -f sql/05_tableless_outbox.sql
-- It revokes EXECUTE from PUBLIC (every overload: PostgreSQL 17 added a `flush` argument) and
-- grants it to that role. If outboxd's [heartbeat] is on, grant it to outboxd's role as well.
-- `outboxd check` fails while PUBLIC can still execute it.

select format('revoke execute on function %s from public', p.oid::regprocedure)
  from pg_proc p
 where p.proname = 'pg_logical_emit_message' and p.pronamespace = 'pg_catalog'::regnamespace \gexec

\if :{?outbox_writer}
select format('grant execute on function %s to %I', p.oid::regprocedure, :'outbox_writer')
  from pg_proc p
 where p.proname = 'pg_logical_emit_message' and p.pronamespace = 'pg_catalog'::regnamespace \gexec
\else
\echo 'no -v outbox_writer=ROLE given: only superusers can emit outbox messages now'
\endif

-- An event, as the application emits it:

begin;
-- ... the business change ...
select pg_logical_emit_message(
    true,
    'outboxd',
    json_build_object(
        'id',            gen_random_uuid(),
        'aggregatetype', 'order',
        'aggregateid',   '42',
        'type',          'OrderCreated',
        'payload',       json_build_object('order', 42, 'amount_cents', 1999)
    )::text
);
commit;
