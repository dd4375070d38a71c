-- The table-less outbox: an event as a transactional logical message instead of a row.
--
-- Nothing is stored in a table (no cleanup needed); the event exists only in the WAL. outboxd
-- forwards messages whose prefix equals [postgres] message_prefix (set message_prefix = "outboxd"),
-- with the same fields as the table's columns in a JSON object. The publication must still exist
-- (sql/02_publication.sql): replication needs one, even if no table in it is ever written.
--
-- transactional MUST be true: the message is then decoded with its transaction, in commit order,
-- and only if the transaction commits. Non-transactional messages (false) are never forwarded.

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
