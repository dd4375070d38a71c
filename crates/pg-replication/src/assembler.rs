//! Turns the decoded pgoutput stream into [`ReplicationEvent`]s: keeps the
//! relation cache, filters to outbox inserts and outbox messages, checks the
//! transaction framing, and delays `Begin` until a transaction has its first
//! outbox event (so transactions without any are never yielded).
//!
//! Pure: no I/O. One XLogData frame in, at most two events out (the delayed
//! `Begin` and the event that triggered it), so the stream never buffers more
//! than that per frame.

use std::collections::HashMap;
use std::sync::Arc;

use pgoutput::{Decoder, LogicalReplicationMessage as M, Lsn, Oid, PgTimestamp, Relation, XLogData, Xid};

use crate::event::*;

/// Why the stream cannot go on from this frame. Never transient: the same
/// bytes fail the same way, and nothing at or after this position may be acked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The bytes are not a valid pgoutput message.
    #[error("malformed pgoutput message at {lsn}: {source}")]
    Decode {
        /// `wal_start` of the frame.
        lsn: Lsn,
        /// What was wrong.
        source: pgoutput::DecodeError,
    },
    /// A change refers to a relation Postgres never described on this connection.
    #[error("change at {lsn} refers to unknown relation id {relation_id} (no Relation message was received for it)")]
    UnknownRelation {
        /// `wal_start` of the frame.
        lsn: Lsn,
        /// The relation OID.
        relation_id: Oid,
    },
    /// An outbox table was renamed: Postgres describes the same relation
    /// under another name, and its rows would no longer count as outbox events.
    #[error("outbox table {table} was renamed to {renamed} (relation id {relation_id}, at {lsn}): its rows would no longer be recognised as outbox events. Rename it back (ALTER TABLE {renamed} RENAME TO ...), or put {renamed} in postgres.tables; nothing from here on was acknowledged")]
    OutboxTableRenamed {
        /// `wal_start` of the frame.
        lsn: Lsn,
        /// The relation OID.
        relation_id: Oid,
        /// The configured name.
        table: String,
        /// The name Postgres sends now.
        renamed: String,
    },
    /// A row of an outbox table was updated and the policy is `stop`.
    #[error("a row of outbox table {table} was updated (transaction with commit LSN {commit_lsn}, change at {lsn}): an outbox table takes inserts only and outbox.on_update = \"stop\"; nothing from this transaction on was acknowledged. Stop updating outbox rows, or set outbox.on_update = \"warn\" or \"ignore\" to go on past it")]
    OutboxRowUpdated {
        /// `wal_start` of the frame.
        lsn: Lsn,
        /// Commit LSN of its transaction.
        commit_lsn: Lsn,
        /// The outbox table.
        table: String,
    },
    /// A message out of place: Begin inside a transaction, a change outside
    /// one, streaming or two-phase messages we did not ask for.
    #[error("unexpected {message} at {lsn}: {why}")]
    Protocol {
        /// `wal_start` of the frame.
        lsn: Lsn,
        /// The message kind.
        message: &'static str,
        /// What was expected.
        why: &'static str,
    },
}

/// An open transaction.
#[derive(Debug)]
struct OpenTransaction {
    xid: Xid,
    commit_lsn: Lsn,
    commit_time: PgTimestamp,
    /// Acknowledged before (commit starts before the resume position): drop its events.
    skip: bool,
    /// Outbox events seen so far in this transaction.
    events: u64,
    /// Events of this transaction already yielded before a reconnect: the
    /// server sends the transaction again from its start, and these are dropped.
    already_yielded: u64,
    /// `Begin` was yielded (in this or an earlier connection).
    begun: bool,
}

/// What one frame produced.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Output {
    /// Up to two events, in order.
    pub(crate) events: Vec<ReplicationEvent>,
    /// A transaction began (for progress tracking).
    pub(crate) began: bool,
    /// A transaction ended at this `end_lsn`; `bool`: whether it yielded events.
    pub(crate) committed: Option<(Lsn, bool)>,
}

#[derive(Debug)]
pub(crate) struct Assembler {
    decoder: Decoder,
    relations: HashMap<Oid, Arc<Relation>>,
    tables: Vec<OutboxTable>,
    message_prefix: Option<String>,
    transaction: Option<OpenTransaction>,
    /// Transactions whose commit starts before this are skipped.
    skip_before: Lsn,
    /// A transaction cut off by a reconnect: (its commit LSN, events yielded).
    resume: Option<(Lsn, u64)>,
    /// What an UPDATE of an outbox row does.
    pub(crate) on_update: UpdatePolicy,
}

/// What an UPDATE of an outbox row does (when the publication publishes
/// updates; DELETEs are always ignored, so a row inserted and deleted in one
/// transaction is still an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UpdatePolicy {
    /// Nothing.
    #[default]
    Ignore,
    /// Log a warning naming the table and position, and go on.
    Warn,
    /// End the stream with [`StreamError::OutboxRowUpdated`] before the
    /// transaction's commit, so nothing from it on is acknowledged.
    Stop,
}

impl Assembler {
    pub(crate) fn new(
        decoder: Decoder,
        tables: Vec<OutboxTable>,
        message_prefix: Option<String>,
        skip_before: Lsn,
    ) -> Self {
        Assembler {
            decoder,
            relations: HashMap::new(),
            tables,
            message_prefix,
            transaction: None,
            skip_before,
            resume: None,
            on_update: UpdatePolicy::Ignore,
        }
    }

    /// The connection was lost: a new one starts with a fresh decoder and
    /// relation cache. The server will send again every transaction whose
    /// commit is at or after its start position, so transactions committed
    /// before `skip_before` (already handed out) are skipped, and a transaction
    /// cut off midway continues after the events already yielded.
    pub(crate) fn reconnect(&mut self, decoder: Decoder, skip_before: Lsn) {
        self.decoder = decoder;
        self.relations.clear();
        self.skip_before = self.skip_before.max(skip_before);
        if let Some(tx) = self.transaction.take() {
            if tx.begun {
                // A transaction cut off again while it was being re-read has
                // yielded as many events as the first connection gave out.
                self.resume = Some((tx.commit_lsn, tx.events.max(tx.already_yielded)));
            }
        }
    }

    /// Processes one XLogData frame.
    pub(crate) fn push(&mut self, frame: &XLogData) -> Result<Output, StreamError> {
        let lsn = frame.wal_start;
        let message = self
            .decoder
            .decode(&frame.data)
            .map_err(|source| StreamError::Decode { lsn, source })?;
        let protocol = |message: &'static str, why: &'static str| StreamError::Protocol { lsn, message, why };
        let mut out = Output::default();
        match message {
            M::Begin(begin) => {
                if self.transaction.is_some() {
                    return Err(protocol("Begin", "a transaction is already open"));
                }
                let already_yielded = match self.resume {
                    Some((commit_lsn, yielded)) if commit_lsn == begin.final_lsn => {
                        self.resume = None;
                        yielded
                    }
                    Some((commit_lsn, _)) if commit_lsn < begin.final_lsn => {
                        return Err(protocol(
                            "Begin",
                            "the transaction cut off by the reconnect was not sent again (did something else consume the slot?)",
                        ));
                    }
                    _ => 0,
                };
                self.transaction = Some(OpenTransaction {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    commit_time: begin.commit_time,
                    skip: begin.final_lsn < self.skip_before && already_yielded == 0,
                    events: 0,
                    already_yielded,
                    begun: already_yielded > 0,
                });
                out.began = true;
            }
            M::Commit(commit) => {
                let Some(tx) = self.transaction.take() else {
                    return Err(protocol("Commit", "no transaction is open"));
                };
                if commit.commit_lsn != tx.commit_lsn {
                    self.transaction = Some(tx);
                    return Err(protocol(
                        "Commit",
                        "its commit LSN differs from the one announced by Begin",
                    ));
                }
                if tx.begun {
                    out.events.push(ReplicationEvent::Commit(TransactionCommit {
                        commit_lsn: commit.commit_lsn,
                        end_lsn: commit.end_lsn,
                        commit_time: commit.commit_time,
                    }));
                }
                out.committed = Some((commit.end_lsn, tx.begun));
            }
            M::Relation(relation) => {
                // Relation messages carry LSN 0/0 and never move positions.
                // A relation that was an outbox table and is described under
                // another name was renamed: its rows would pass unrecognised.
                let was_outbox = self
                    .relations
                    .get(&relation.id)
                    .and_then(|old| self.tables.iter().find(|t| t.matches(old)));
                if let Some(table) = was_outbox {
                    if !self.tables.iter().any(|t| t.matches(&relation)) {
                        let schema = if relation.namespace.is_empty() {
                            "pg_catalog"
                        } else {
                            &relation.namespace
                        };
                        return Err(StreamError::OutboxTableRenamed {
                            lsn,
                            relation_id: relation.id,
                            table: table.to_string(),
                            renamed: format!("{schema}.{}", relation.name),
                        });
                    }
                }
                self.relations.insert(relation.id, Arc::new(relation));
            }
            M::Insert(insert) => {
                let relation =
                    self.relations
                        .get(&insert.relation_id)
                        .ok_or(StreamError::UnknownRelation {
                            lsn,
                            relation_id: insert.relation_id,
                        })?;
                if self.tables.iter().any(|t| t.matches(relation)) {
                    let relation = Arc::clone(relation);
                    let tx = self
                        .transaction
                        .as_mut()
                        .ok_or_else(|| protocol("Insert", "outside a transaction"))?;
                    if let Some(index) = next_event(tx, &mut out) {
                        out.events.push(ReplicationEvent::Insert(OutboxInsert {
                            relation,
                            row: insert.new,
                            lsn,
                            commit_lsn: tx.commit_lsn,
                            index,
                        }));
                    }
                }
            }
            M::Update(change) => {
                self.check_relation(lsn, change.relation_id)?;
                self.on_update(lsn, change.relation_id)?;
            }
            M::Delete(change) => self.check_relation(lsn, change.relation_id)?,
            M::Message(message) if message.transactional => {
                if self.message_prefix.as_deref() == Some(message.prefix.as_str()) {
                    let tx = self
                        .transaction
                        .as_mut()
                        .ok_or_else(|| protocol("Message", "outside a transaction"))?;
                    if let Some(index) = next_event(tx, &mut out) {
                        out.events.push(ReplicationEvent::Message(OutboxMessage {
                            prefix: message.prefix,
                            content: message.content,
                            lsn: message.lsn,
                            commit_lsn: tx.commit_lsn,
                            index,
                        }));
                    }
                }
            }
            // Non-transactional messages are not part of any commit: never outbox events.
            M::Message(_) | M::Truncate(_) | M::Type(_) | M::Origin(_) => {}
            M::StreamStart(_)
            | M::StreamStop
            | M::StreamCommit(_)
            | M::StreamAbort(_)
            | M::StreamPrepare(_)
            | M::BeginPrepare(_)
            | M::Prepare(_)
            | M::CommitPrepared(_)
            | M::RollbackPrepared(_) => {
                return Err(protocol(
                    "streaming or two-phase message",
                    "neither streaming nor two_phase was requested",
                ))
            }
            _ => return Err(protocol("message", "this pgoutput message kind is not handled")),
        }
        Ok(out)
    }

    /// Applies the update policy to an UPDATE of `relation_id` (a known relation).
    fn on_update(&self, lsn: Lsn, relation_id: Oid) -> Result<(), StreamError> {
        let Some(table) = self
            .relations
            .get(&relation_id)
            .and_then(|relation| self.tables.iter().find(|t| t.matches(relation)))
        else {
            return Ok(());
        };
        // A transaction handed out before (a checkpoint, a reconnect) was judged then.
        let Some(tx) = self.transaction.as_ref().filter(|tx| !tx.skip) else {
            return Ok(());
        };
        match self.on_update {
            UpdatePolicy::Ignore => Ok(()),
            UpdatePolicy::Warn => {
                tracing::warn!(table = %table, lsn = %lsn, commit_lsn = %tx.commit_lsn,
                               "a row of an outbox table was updated; outbox rows take inserts only (ignored)");
                Ok(())
            }
            UpdatePolicy::Stop => Err(StreamError::OutboxRowUpdated {
                lsn,
                commit_lsn: tx.commit_lsn,
                table: table.to_string(),
            }),
        }
    }

    /// Updates and deletes are not outbox events, but a change to a relation
    /// we never heard of means we lost track of the stream.
    fn check_relation(&self, lsn: Lsn, relation_id: Oid) -> Result<(), StreamError> {
        if self.relations.contains_key(&relation_id) {
            Ok(())
        } else {
            Err(StreamError::UnknownRelation { lsn, relation_id })
        }
    }
}

/// Counts an outbox event of `tx`; returns its index if it is to be yielded
/// (not skipped, not yielded before a reconnect), emitting the delayed Begin
/// before the transaction's first yielded event.
fn next_event(tx: &mut OpenTransaction, out: &mut Output) -> Option<u64> {
    let index = tx.events;
    tx.events += 1;
    if tx.skip || index < tx.already_yielded {
        return None;
    }
    if !tx.begun {
        tx.begun = true;
        out.events.push(ReplicationEvent::Begin(TransactionBegin {
            xid: tx.xid,
            commit_lsn: tx.commit_lsn,
            commit_time: tx.commit_time,
        }));
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgoutput::*;

    use super::*;

    const OUTBOX: Oid = 16_400;
    const OTHER: Oid = 16_500;

    fn frame(lsn: u64, message: LogicalReplicationMessage) -> XLogData {
        XLogData {
            wal_start: Lsn::new(lsn),
            wal_end: Lsn::new(lsn),
            server_time: PgTimestamp::from_micros(0),
            data: message.encode(),
        }
    }

    fn relation(id: Oid, name: &str, columns: &[&str]) -> LogicalReplicationMessage {
        LogicalReplicationMessage::Relation(Relation {
            xid: None,
            id,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|c| Column {
                    flags: 0,
                    name: (*c).into(),
                    type_id: 25,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn begin(final_lsn: u64, xid: Xid) -> LogicalReplicationMessage {
        LogicalReplicationMessage::Begin(Begin {
            final_lsn: Lsn::new(final_lsn),
            commit_time: PgTimestamp::from_micros(1_000),
            xid,
        })
    }

    fn commit(commit_lsn: u64, end_lsn: u64) -> LogicalReplicationMessage {
        LogicalReplicationMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn::new(commit_lsn),
            end_lsn: Lsn::new(end_lsn),
            commit_time: PgTimestamp::from_micros(1_000),
        })
    }

    fn insert(relation_id: Oid, value: &'static str) -> LogicalReplicationMessage {
        LogicalReplicationMessage::Insert(Insert {
            xid: None,
            relation_id,
            new: TupleData {
                columns: vec![ColumnValue::Text(Bytes::from_static(value.as_bytes()))],
            },
        })
    }

    fn assembler(skip_before: u64) -> Assembler {
        Assembler::new(
            Decoder::new(1).unwrap(),
            vec![OutboxTable::new("public", "outbox")],
            Some("outboxd".into()),
            Lsn::new(skip_before),
        )
    }

    /// Feeds messages at increasing LSNs; returns all events and the commits seen.
    fn run(
        a: &mut Assembler,
        messages: Vec<LogicalReplicationMessage>,
    ) -> (Vec<ReplicationEvent>, Vec<(Lsn, bool)>) {
        let mut events = Vec::new();
        let mut commits = Vec::new();
        for (i, m) in messages.into_iter().enumerate() {
            let out = a.push(&frame(1_000 + i as u64, m)).unwrap();
            assert!(out.events.len() <= 2);
            events.extend(out.events);
            commits.extend(out.committed);
        }
        (events, commits)
    }

    fn values(events: &[ReplicationEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ReplicationEvent::Begin(b) => format!("begin {}", b.commit_lsn.as_u64()),
                ReplicationEvent::Insert(i) => {
                    format!("insert {} #{}", i.row.columns[0].as_text().unwrap(), i.index)
                }
                ReplicationEvent::Message(m) => {
                    format!("message {} #{}", String::from_utf8_lossy(&m.content), m.index)
                }
                ReplicationEvent::Commit(c) => format!("commit {}", c.end_lsn.as_u64()),
            })
            .collect()
    }

    #[test]
    fn yields_only_outbox_inserts_and_outbox_messages_in_order() {
        let mut a = assembler(0);
        let message = |transactional, prefix: &str, content: &'static str| {
            LogicalReplicationMessage::Message(Message {
                xid: None,
                transactional,
                lsn: Lsn::new(5),
                prefix: prefix.into(),
                content: Bytes::from_static(content.as_bytes()),
            })
        };
        let update = LogicalReplicationMessage::Update(Update {
            xid: None,
            relation_id: OUTBOX,
            old: None,
            new: TupleData {
                columns: vec![ColumnValue::Null],
            },
        });
        let (events, commits) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                relation(OTHER, "orders", &["id"]),
                message(false, "outboxd", "not transactional"),
                begin(2_000, 7),
                insert(OTHER, "order row"),
                insert(OUTBOX, "a"),
                update,
                message(true, "other-prefix", "x"),
                message(true, "outboxd", "m"),
                insert(OUTBOX, "b"),
                commit(2_000, 2_010),
            ],
        );
        assert_eq!(
            values(&events),
            [
                "begin 2000",
                "insert a #0",
                "message m #1",
                "insert b #2",
                "commit 2010"
            ]
        );
        assert_eq!(commits, [(Lsn::new(2_010), true)]);
        let ReplicationEvent::Insert(first) = &events[1] else {
            panic!()
        };
        assert_eq!(first.lsn, Lsn::new(1_005));
        assert_eq!(first.commit_lsn, Lsn::new(2_000));
        assert_eq!(first.column("id").and_then(|v| v.as_text()), Some("a"));
    }

    #[test]
    fn transaction_without_outbox_events_is_not_yielded_but_reported() {
        let mut a = assembler(0);
        let (events, commits) = run(
            &mut a,
            vec![
                relation(OTHER, "orders", &["id"]),
                begin(2_000, 7),
                insert(OTHER, "x"),
                commit(2_000, 2_010),
            ],
        );
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(commits, [(Lsn::new(2_010), false)]);
    }

    #[test]
    fn transactions_committed_before_the_resume_position_are_skipped() {
        let mut a = assembler(3_000);
        let (events, commits) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                begin(2_000, 7),
                insert(OUTBOX, "old"),
                commit(2_000, 2_010),
                begin(3_000, 8),
                insert(OUTBOX, "new"),
                commit(3_000, 3_010),
            ],
        );
        assert_eq!(values(&events), ["begin 3000", "insert new #0", "commit 3010"]);
        assert_eq!(commits, [(Lsn::new(2_010), false), (Lsn::new(3_010), true)]);
    }

    #[test]
    fn reconnect_mid_transaction_continues_after_what_was_yielded() {
        let mut a = assembler(0);
        let (first, _) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                begin(2_000, 7),
                insert(OUTBOX, "a"),
                commit(2_000, 2_010),
                begin(3_000, 8),
                insert(OUTBOX, "b"),
                insert(OUTBOX, "c"),
            ],
        );
        assert_eq!(
            values(&first),
            [
                "begin 2000",
                "insert a #0",
                "commit 2010",
                "begin 3000",
                "insert b #0",
                "insert c #1"
            ]
        );
        // The server resends from the last confirmed position (nothing acked yet).
        a.reconnect(Decoder::new(1).unwrap(), Lsn::new(2_010));
        let (second, commits) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                begin(2_000, 7),
                insert(OUTBOX, "a"),
                commit(2_000, 2_010),
                begin(3_000, 8),
                insert(OUTBOX, "b"),
                insert(OUTBOX, "c"),
                insert(OUTBOX, "d"),
                commit(3_000, 3_010),
            ],
        );
        assert_eq!(values(&second), ["insert d #2", "commit 3010"]);
        assert_eq!(commits, [(Lsn::new(2_010), false), (Lsn::new(3_010), true)]);
    }

    #[test]
    fn second_reconnect_while_re_reading_a_transaction_does_not_yield_its_events_again() {
        let mut a = assembler(0);
        let first_try = vec![
            relation(OUTBOX, "outbox", &["id"]),
            begin(3_000, 8),
            insert(OUTBOX, "a"),
            insert(OUTBOX, "b"),
            insert(OUTBOX, "c"),
        ];
        let (first, _) = run(&mut a, first_try);
        assert_eq!(
            values(&first),
            ["begin 3000", "insert a #0", "insert b #1", "insert c #2"]
        );
        a.reconnect(Decoder::new(1).unwrap(), Lsn::ZERO);
        // The second connection re-reads one event of the three, then drops too.
        let (second, _) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                begin(3_000, 8),
                insert(OUTBOX, "a"),
            ],
        );
        assert!(second.is_empty(), "{:?}", values(&second));
        a.reconnect(Decoder::new(1).unwrap(), Lsn::ZERO);
        let (third, _) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                begin(3_000, 8),
                insert(OUTBOX, "a"),
                insert(OUTBOX, "b"),
                insert(OUTBOX, "c"),
                insert(OUTBOX, "d"),
                commit(3_000, 3_010),
            ],
        );
        assert_eq!(values(&third), ["insert d #3", "commit 3010"]);
    }

    #[test]
    fn reconnect_before_any_event_of_the_open_transaction_starts_it_cleanly() {
        let mut a = assembler(0);
        run(&mut a, vec![relation(OUTBOX, "outbox", &["id"]), begin(3_000, 8)]);
        a.reconnect(Decoder::new(1).unwrap(), Lsn::ZERO);
        let (events, _) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                begin(3_000, 8),
                insert(OUTBOX, "x"),
                commit(3_000, 3_010),
            ],
        );
        assert_eq!(values(&events), ["begin 3000", "insert x #0", "commit 3010"]);
    }

    #[test]
    fn schema_change_replaces_the_cached_relation() {
        let mut a = assembler(0);
        let (events, _) = run(
            &mut a,
            vec![
                relation(OUTBOX, "outbox", &["id"]),
                begin(2_000, 7),
                insert(OUTBOX, "a"),
                commit(2_000, 2_010),
                relation(OUTBOX, "outbox", &["id", "extra"]),
                begin(3_000, 8),
                insert(OUTBOX, "b"),
                commit(3_000, 3_010),
            ],
        );
        let columns = |e: &ReplicationEvent| match e {
            ReplicationEvent::Insert(i) => i.relation.columns.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!((columns(&events[1]), columns(&events[4])), (1, 2));
    }

    #[test]
    fn insert_into_unknown_relation_is_an_error_with_its_lsn() {
        let mut a = assembler(0);
        a.push(&frame(10, begin(2_000, 7))).unwrap();
        let err = a.push(&frame(11, insert(OUTBOX, "a"))).unwrap_err();
        assert_eq!(
            err,
            StreamError::UnknownRelation {
                lsn: Lsn::new(11),
                relation_id: OUTBOX
            }
        );
        assert!(err.to_string().contains("0/B"), "{err}");
    }

    #[test]
    fn framing_errors_are_errors() {
        let mut a = assembler(0);
        assert!(matches!(
            a.push(&frame(1, commit(1, 2))),
            Err(StreamError::Protocol { .. })
        ));
        a.push(&frame(2, begin(2_000, 7))).unwrap();
        assert!(matches!(
            a.push(&frame(3, begin(2_000, 7))),
            Err(StreamError::Protocol { .. })
        ));
        assert!(matches!(
            a.push(&frame(4, commit(2_001, 2_010))),
            Err(StreamError::Protocol { .. })
        ));
        assert!(a.transaction.is_some());
        let stream_stop = XLogData {
            wal_start: Lsn::new(5),
            wal_end: Lsn::new(5),
            server_time: PgTimestamp::from_micros(0),
            data: Bytes::from_static(b"E"),
        };
        assert!(matches!(a.push(&stream_stop), Err(StreamError::Decode { .. })));
    }

    #[test]
    fn malformed_message_is_a_decode_error_naming_the_lsn() {
        let mut a = assembler(0);
        let bad = XLogData {
            wal_start: Lsn::new(0x1_0000_0020),
            wal_end: Lsn::new(0),
            server_time: PgTimestamp::from_micros(0),
            data: Bytes::from_static(b"I\0\0"),
        };
        let err = a.push(&bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed pgoutput message at 1/20: cannot decode Insert"),
            "{err}"
        );
    }

    fn update(relation_id: Oid) -> LogicalReplicationMessage {
        LogicalReplicationMessage::Update(Update {
            xid: None,
            relation_id,
            old: None,
            new: TupleData {
                columns: vec![ColumnValue::Null],
            },
        })
    }

    /// Debezium's `table.op.invalid.behavior`: an UPDATE of an outbox row
    /// stops the stream under `stop` (before the Commit, so nothing of the
    /// transaction is acknowledged), is passed over under `warn` and
    /// `ignore`; updates of other tables and of transactions already handed
    /// out never count; DELETEs never do.
    #[test]
    fn an_outbox_update_stops_only_under_stop_and_never_for_other_tables_or_skipped_transactions() {
        let setup = |policy: UpdatePolicy, skip_before: u64| {
            let mut a = assembler(skip_before);
            a.on_update = policy;
            for m in [
                relation(OUTBOX, "outbox", &["id"]),
                relation(OTHER, "orders", &["id"]),
            ] {
                a.push(&frame(900, m)).unwrap();
            }
            a
        };
        for policy in [UpdatePolicy::Ignore, UpdatePolicy::Warn] {
            let mut a = setup(policy, 0);
            let (events, commits) = run(
                &mut a,
                vec![
                    begin(2_000, 7),
                    insert(OUTBOX, "a"),
                    update(OUTBOX),
                    commit(2_000, 2_010),
                ],
            );
            assert_eq!(
                values(&events),
                ["begin 2000", "insert a #0", "commit 2010"],
                "{policy:?}"
            );
            assert_eq!(commits, [(Lsn::new(2_010), true)]);
        }
        let mut a = setup(UpdatePolicy::Stop, 0);
        let (events, _) = run(&mut a, vec![begin(2_000, 7), insert(OUTBOX, "a"), update(OTHER)]);
        assert_eq!(values(&events), ["begin 2000", "insert a #0"]);
        let err = a.push(&frame(1_500, update(OUTBOX))).unwrap_err();
        assert_eq!(
            err,
            StreamError::OutboxRowUpdated {
                lsn: Lsn::new(1_500),
                commit_lsn: Lsn::new(2_000),
                table: "public.outbox".into(),
            }
        );
        assert!(err.to_string().contains("outbox.on_update = \"warn\""), "{err}");
        // A transaction before the checkpoint was judged when it was first read.
        let mut a = setup(UpdatePolicy::Stop, 3_000);
        let (events, _) = run(
            &mut a,
            vec![begin(2_000, 7), update(OUTBOX), commit(2_000, 2_010)],
        );
        assert!(events.is_empty());
    }
}
