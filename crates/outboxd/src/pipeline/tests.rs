//! The ordered loop with a scripted source and a scripted sink, under paused
//! time: no Postgres, no broker. Each test drives events in, reports outcomes
//! in the order it chooses, and asserts what was acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use outbox_core::{Delivery, DeliveryError, PermanentReason, Record, Sink, TxSeq};
use pg_replication::{
    OutboxInsert, OutboxMessage, ReplicationError, ReplicationEvent, TransactionBegin, TransactionCommit,
};
use pgoutput::{Column, ColumnValue, Lsn, PgTimestamp, Relation, ReplicaIdentity, TupleData};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::*;
use crate::checkpoint::CheckpointStore;
use crate::source::EventSource;

fn lsn(raw: u64) -> Lsn {
    Lsn::new(raw)
}

/// Events pushed by the test; acknowledgements recorded.
struct ScriptedSource {
    events: mpsc::UnboundedReceiver<Result<ReplicationEvent, ReplicationError>>,
    acks: Arc<Mutex<Vec<Lsn>>>,
    received: Arc<Mutex<Lsn>>,
}

impl EventSource for ScriptedSource {
    async fn next(&mut self) -> Option<Result<ReplicationEvent, ReplicationError>> {
        self.events.recv().await
    }

    fn ack(&mut self, end_lsn: Lsn) {
        let mut acks = self.acks.lock().unwrap();
        assert!(
            acks.last().is_none_or(|last| *last < end_lsn),
            "acknowledged {end_lsn} after {acks:?}"
        );
        acks.push(end_lsn);
    }

    fn received(&self) -> Lsn {
        *self.received.lock().unwrap()
    }

    async fn shutdown(self) -> Result<(), ReplicationError> {
        Ok(())
    }
}

/// Accepts records while it has room; outcomes are reported by the test.
struct ScriptedSink {
    sent: Arc<Mutex<Vec<(TxSeq, Record)>>>,
    room: Arc<Semaphore>,
}

impl Sink for ScriptedSink {
    async fn send(&mut self, record: Record, tx: TxSeq) -> Result<(), DeliveryError> {
        // Cancel-safe: the permit is taken whole or not at all.
        self.room.acquire().await.expect("room").forget();
        self.sent.lock().unwrap().push((tx, record));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        Ok(())
    }
}

struct Harness {
    events: mpsc::UnboundedSender<Result<ReplicationEvent, ReplicationError>>,
    acks: Arc<Mutex<Vec<Lsn>>>,
    received: Arc<Mutex<Lsn>>,
    sent: Arc<Mutex<Vec<(TxSeq, Record)>>>,
    reports: mpsc::UnboundedSender<Delivery>,
    stop: Option<oneshot::Sender<()>>,
    lose_lease: Option<oneshot::Sender<()>>,
    run: tokio::task::JoinHandle<Result<Summary, PipelineError>>,
    metrics: Arc<Metrics>,
}

fn options(policy: PermanentErrorPolicy) -> PipelineOptions {
    PipelineOptions {
        mapping: ColumnMapping::default(),
        routing: Routing::default(),
        policy,
        dead_letter_topic: "outboxd.dlq".into(),
        drain_timeout: Duration::from_secs(10),
        checkpoint_interval: Duration::from_secs(1),
        tables: "public.outbox".into(),
        retention: Retention::default(),
    }
}

impl Harness {
    fn start(options: PipelineOptions, start: Lsn, checkpoint: Option<CheckpointStore>, room: usize) -> Self {
        let checkpoint = checkpoint.map(crate::checkpoint_store::Checkpoints::File);
        let (events, events_rx) = mpsc::unbounded_channel();
        let (reports, deliveries) = mpsc::unbounded_channel();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(Mutex::new(start));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let room = Arc::new(Semaphore::new(room));
        let source = ScriptedSource {
            events: events_rx,
            acks: Arc::clone(&acks),
            received: Arc::clone(&received),
        };
        let sink = ScriptedSink {
            sent: Arc::clone(&sent),
            room,
        };
        let metrics = Metrics::new();
        let pipeline = Pipeline::new(options, sink, deliveries, start, checkpoint, Arc::clone(&metrics));
        let (stop, stopped) = oneshot::channel::<()>();
        let (lose_lease, lease_lost) = oneshot::channel::<()>();
        let run = tokio::spawn(pipeline.run(
            source,
            async move {
                let _ = stopped.await;
            },
            async move {
                match lease_lost.await {
                    Ok(()) => "the lease connection closed".to_owned(),
                    Err(_) => std::future::pending().await,
                }
            },
        ));
        Harness {
            events,
            acks,
            received,
            sent,
            reports,
            stop: Some(stop),
            lose_lease: Some(lose_lease),
            run,
            metrics,
        }
    }

    /// A committed transaction of `events` outbox messages, ending at `end`.
    fn transaction(&self, commit: u64, end: u64, events: &[(&str, &str)]) {
        let begin = TransactionBegin {
            xid: 1,
            commit_lsn: lsn(commit),
            commit_time: PgTimestamp::from_micros(0),
        };
        self.push(ReplicationEvent::Begin(begin));
        for (index, (id, key)) in events.iter().enumerate() {
            self.push(message(commit, index as u64, id, key));
        }
        self.push(ReplicationEvent::Commit(TransactionCommit {
            commit_lsn: lsn(commit),
            end_lsn: lsn(end),
            commit_time: PgTimestamp::from_micros(0),
        }));
        *self.received.lock().unwrap() = lsn(end);
    }

    fn push(&self, event: ReplicationEvent) {
        self.events.send(Ok(event)).unwrap();
    }

    /// Lets the pipeline run until it is idle (paused time moves on when
    /// every task waits).
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    fn sent(&self) -> Vec<(TxSeq, Record)> {
        self.sent.lock().unwrap().clone()
    }

    fn acked(&self) -> Option<Lsn> {
        self.acks.lock().unwrap().last().copied()
    }

    fn report(&self, index: usize, result: Result<(), DeliveryError>) {
        let (tx, record) = self.sent()[index].clone();
        let delivery = match result {
            Ok(()) => Delivery::delivered(tx, &record),
            Err(error) => Delivery::failed(tx, record, error),
        };
        self.reports.send(delivery).unwrap();
    }

    async fn stop(mut self) -> Result<Summary, PipelineError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.run.await.unwrap()
    }
}

fn message(commit: u64, index: u64, id: &str, key: &str) -> ReplicationEvent {
    let content = serde_json::json!({
        "id": id, "aggregatetype": "order", "aggregateid": key, "type": "OrderCreated",
        "payload": {"n": index},
    });
    ReplicationEvent::Message(OutboxMessage {
        prefix: "outboxd".into(),
        content: Bytes::from(content.to_string()),
        lsn: lsn(commit - 1),
        commit_lsn: lsn(commit),
        index,
    })
}

#[tokio::test(start_paused = true)]
async fn out_of_order_delivery_reports_acknowledge_only_the_delivered_prefix() {
    let h = Harness::start(options(PermanentErrorPolicy::Stop), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.transaction(300, 310, &[("b1", "k2"), ("b2", "k1")]);
    h.transaction(400, 410, &[("c1", "k3")]);
    h.settle().await;
    let ids: Vec<String> = h.sent().iter().map(|(_, r)| r.id.clone()).collect();
    assert_eq!(ids, ["a1", "b1", "b2", "c1"], "sent in commit order");
    // The start is released at once (no replay window), nothing else yet.
    assert_eq!(h.acked(), Some(lsn(100)));

    h.report(3, Ok(()));
    h.report(2, Ok(()));
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(100)), "c and half of b delivered, a not");
    h.report(0, Ok(()));
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(210)), "a delivered; b still holds the prefix");
    h.report(1, Ok(()));
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(410)), "everything delivered");
    assert_eq!(*h.acks.lock().unwrap(), [lsn(100), lsn(210), lsn(410)]);

    let summary = h.stop().await.unwrap();
    assert_eq!(
        (summary.sent, summary.delivered, summary.confirmed),
        (4, 4, lsn(410))
    );
}

#[tokio::test(start_paused = true)]
async fn a_transaction_without_deliverable_rows_still_waits_for_its_predecessors() {
    let h = Harness::start(options(PermanentErrorPolicy::Stop), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.transaction(300, 310, &[]);
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(100)));
    h.report(0, Ok(()));
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(310)));
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_in_the_middle_of_a_transaction_stops_before_it_under_stop() {
    let h = Harness::start(options(PermanentErrorPolicy::Stop), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.transaction(300, 310, &[("b1", "k1"), ("b2", "k2"), ("b3", "k1")]);
    h.transaction(400, 410, &[("c1", "k3")]);
    h.settle().await;
    h.report(0, Ok(()));
    h.report(1, Ok(()));
    h.report(
        2,
        Err(DeliveryError::permanent(PermanentReason::TooLarge, "too large")),
    );
    h.report(3, Ok(()));
    h.report(4, Ok(()));
    let err = h.stop().await.unwrap_err();
    match &err {
        PipelineError::Undeliverable {
            id,
            commit_lsn,
            index,
            confirmed,
            ..
        } => {
            assert_eq!((id.as_str(), *commit_lsn, *index), ("b2", lsn(300), 1));
            assert_eq!(*confirmed, lsn(210));
        }
        other => panic!("expected Undeliverable, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("id=b2") && text.contains("public.outbox"), "{text}");
    assert!(text.contains("on_permanent_error = \"dead-letter\""), "{text}");
}

#[tokio::test(start_paused = true)]
async fn dead_letter_policy_sends_the_record_without_its_too_large_value_and_goes_on() {
    let h = Harness::start(options(PermanentErrorPolicy::DeadLetter), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1"), ("a2", "k2")]);
    h.transaction(300, 310, &[("b1", "k2")]);
    h.settle().await;
    h.report(0, Ok(()));
    h.report(
        1,
        Err(DeliveryError::permanent(
            PermanentReason::TooLarge,
            "Broker: Message size too large",
        )),
    );
    h.report(2, Ok(()));
    h.settle().await;
    assert_eq!(
        h.acked(),
        Some(lsn(100)),
        "the dead-letter record is not delivered yet"
    );
    let sent = h.sent();
    assert_eq!(sent.len(), 4);
    let (tx, dead) = &sent[3];
    assert_eq!(
        *tx, sent[1].0,
        "the dead-letter record belongs to the failed record's transaction"
    );
    assert_eq!(dead.topic, "outboxd.dlq");
    assert_eq!(dead.id, "a2");
    assert_eq!(dead.key, Bytes::from_static(b"k2"));
    assert_eq!(dead.value, None, "a too-large value is left out");
    let header = |name: &str| {
        dead.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(DLQ_REASON_HEADER).as_deref(), Some("too_large"));
    assert_eq!(header(DLQ_TOPIC_HEADER).as_deref(), Some("outbox.event.order"));
    assert_eq!(header("id").as_deref(), Some("a2"));
    h.report(3, Ok(()));
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(310)));
    let summary = h.stop().await.unwrap();
    assert_eq!((summary.dead_lettered, summary.confirmed), (1, lsn(310)));
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_record_that_fails_too_stops_the_run_instead_of_looping() {
    let h = Harness::start(options(PermanentErrorPolicy::DeadLetter), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.settle().await;
    h.report(
        0,
        Err(DeliveryError::permanent(PermanentReason::Rejected, "policy")),
    );
    h.settle().await;
    assert_eq!(h.sent().len(), 2);
    h.report(
        1,
        Err(DeliveryError::permanent(PermanentReason::Unroutable, "no dlq")),
    );
    let err = h.stop().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("dead-lettering to outboxd.dlq failed too"),
        "{err}"
    );
    assert!(!err.to_string().contains("set sink.on_permanent_error"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_retriable_failure_reported_is_never_dead_lettered() {
    let h = Harness::start(options(PermanentErrorPolicy::DeadLetter), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.transaction(300, 310, &[("b1", "k1")]);
    h.settle().await;
    h.report(0, Err(DeliveryError::retriable("broker gone")));
    h.report(1, Ok(()));
    let err = h.stop().await.unwrap_err();
    assert!(err.to_string().contains("the sink gave up on it"), "{err}");
    match err {
        PipelineError::Undeliverable { id, confirmed, .. } => {
            assert_eq!((id.as_str(), confirmed), ("a1", lsn(100)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_fatal_sink_error_stops_at_once() {
    let h = Harness::start(options(PermanentErrorPolicy::DeadLetter), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.settle().await;
    h.report(0, Err(DeliveryError::fatal("producer fenced")));
    let err = h.run.await.unwrap().unwrap_err();
    assert!(
        matches!(err, PipelineError::Sink(_, c) if c == lsn(100)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_a_send_waits_for_room_stops_without_acknowledging_it() {
    // Room for one record: the second send waits (a full producer queue).
    let mut options = options(PermanentErrorPolicy::Stop);
    options.drain_timeout = Duration::from_secs(4);
    let h = Harness::start(options, lsn(100), None, 1);
    h.transaction(200, 210, &[("a1", "k1"), ("a2", "k1")]);
    h.settle().await;
    assert_eq!(h.sent().len(), 1, "the second record waits for room");
    let started = tokio::time::Instant::now();
    let acks = Arc::clone(&h.acks);
    let result = h.stop().await;
    // The first record was never reported: the drain gives up after its timeout.
    assert!(
        matches!(result, Err(PipelineError::DrainTimeout(1))),
        "{result:?}"
    );
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(acks.lock().unwrap().last(), Some(&lsn(100)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_open_transaction_first() {
    let h = Harness::start(options(PermanentErrorPolicy::Stop), lsn(100), None, 100);
    h.push(ReplicationEvent::Begin(TransactionBegin {
        xid: 1,
        commit_lsn: lsn(200),
        commit_time: PgTimestamp::from_micros(0),
    }));
    h.push(message(200, 0, "a1", "k1"));
    h.settle().await;
    let Harness {
        events,
        acks,
        sent,
        reports,
        mut stop,
        run,
        ..
    } = h;
    stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "the open transaction is finished first");
    events.send(Ok(message(200, 1, "a2", "k1"))).unwrap();
    events
        .send(Ok(ReplicationEvent::Commit(TransactionCommit {
            commit_lsn: lsn(200),
            end_lsn: lsn(210),
            commit_time: PgTimestamp::from_micros(0),
        })))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (tx, record) in sent.lock().unwrap().iter() {
        reports.send(Delivery::delivered(*tx, record)).unwrap();
    }
    let summary = run.await.unwrap().unwrap();
    assert_eq!((summary.sent, summary.confirmed), (2, lsn(210)));
    assert_eq!(acks.lock().unwrap().last(), Some(&lsn(210)));
}

#[tokio::test(start_paused = true)]
async fn the_replay_window_holds_the_slot_back_but_not_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path().join("cp"));
    let mut options = options(PermanentErrorPolicy::Stop);
    options.retention = Retention {
        duration: Duration::from_secs(60),
        bytes: 0,
    };
    let h = Harness::start(options, lsn(100), Some(store.clone()), 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.settle().await;
    h.report(0, Ok(()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.acked(), None, "nothing is a minute old yet");
    // The checkpoint is written off the loop; give the blocking write a moment.
    for _ in 0..100 {
        if store.load().unwrap().is_some() {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(5));
    }
    let checkpoint = store.load().unwrap().expect("checkpoint written");
    assert_eq!(checkpoint.delivered_end_lsn, lsn(210));
    assert_eq!(checkpoint.last_event.map(|e| e.id), Some("a1".to_owned()));
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(h.acked(), Some(lsn(100)), "the start is a minute old");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.acked(), Some(lsn(210)), "a1's transaction is a minute old");
    h.stop().await.unwrap();
}

fn relation(columns: &[&str]) -> Arc<Relation> {
    Arc::new(Relation {
        xid: None,
        id: 16384,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|name| Column {
                flags: 0,
                name: (*name).to_owned(),
                type_id: 25,
                type_modifier: -1,
            })
            .collect(),
    })
}

fn insert(relation: &Arc<Relation>, commit: u64, index: u64, values: &[Option<&str>]) -> ReplicationEvent {
    ReplicationEvent::Insert(OutboxInsert {
        relation: Arc::clone(relation),
        row: TupleData {
            columns: values
                .iter()
                .map(|v| match v {
                    Some(v) => ColumnValue::Text(Bytes::from(v.to_string())),
                    None => ColumnValue::Null,
                })
                .collect(),
        },
        lsn: lsn(commit - 1),
        commit_lsn: lsn(commit),
        index,
    })
}

#[tokio::test(start_paused = true)]
async fn a_mapped_column_missing_from_the_table_stops_even_under_dead_letter() {
    let h = Harness::start(options(PermanentErrorPolicy::DeadLetter), lsn(100), None, 100);
    // A NULL aggregate id is this row's fault: dead-lettered.
    let good = relation(&["id", "aggregatetype", "aggregateid", "type", "payload"]);
    let begin = |commit: u64| {
        ReplicationEvent::Begin(TransactionBegin {
            xid: 1,
            commit_lsn: lsn(commit),
            commit_time: PgTimestamp::from_micros(0),
        })
    };
    let commit = |commit: u64, end: u64| {
        ReplicationEvent::Commit(TransactionCommit {
            commit_lsn: lsn(commit),
            end_lsn: lsn(end),
            commit_time: PgTimestamp::from_micros(0),
        })
    };
    h.push(begin(200));
    h.push(insert(
        &good,
        200,
        0,
        &[Some("n1"), Some("order"), None, Some("T"), Some("{}")],
    ));
    h.push(commit(200, 210));
    // `aggregateid` dropped by DDL: every later row fails the same way.
    let dropped = relation(&["id", "aggregatetype", "type", "payload"]);
    h.push(begin(300));
    h.push(insert(
        &dropped,
        300,
        0,
        &[Some("d1"), Some("order"), Some("T"), Some("{}")],
    ));
    h.push(commit(300, 310));
    h.push(begin(400));
    h.push(insert(
        &dropped,
        400,
        0,
        &[Some("d2"), Some("order"), Some("T"), Some("{}")],
    ));
    h.push(commit(400, 410));
    h.settle().await;
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "only the NULL row's dead-letter record: {sent:?}");
    assert_eq!(sent[0].1.topic, "outboxd.dlq");
    assert_eq!(sent[0].1.id, "n1");
    h.report(0, Ok(()));
    let err = h.stop().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("id=d1") && text.contains("no column \"aggregateid\""),
        "{text}"
    );
    match err {
        PipelineError::Undeliverable { confirmed, .. } => assert_eq!(confirmed, lsn(210)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_outbox_message_missing_a_field_is_dead_lettered_alone() {
    let h = Harness::start(options(PermanentErrorPolicy::DeadLetter), lsn(100), None, 100);
    h.push(ReplicationEvent::Begin(TransactionBegin {
        xid: 1,
        commit_lsn: lsn(200),
        commit_time: PgTimestamp::from_micros(0),
    }));
    h.push(ReplicationEvent::Message(OutboxMessage {
        prefix: "outboxd".into(),
        content: Bytes::from_static(br#"{"id": "m1", "aggregatetype": "order", "type": "T"}"#),
        lsn: lsn(199),
        commit_lsn: lsn(200),
        index: 0,
    }));
    h.push(message(200, 1, "m2", "k1"));
    h.push(ReplicationEvent::Commit(TransactionCommit {
        commit_lsn: lsn(200),
        end_lsn: lsn(210),
        commit_time: PgTimestamp::from_micros(0),
    }));
    h.settle().await;
    let topics: Vec<(String, String)> = h
        .sent()
        .iter()
        .map(|(_, r)| (r.id.clone(), r.topic.clone()))
        .collect();
    assert_eq!(
        topics,
        [
            ("m1".to_owned(), "outboxd.dlq".to_owned()),
            ("m2".to_owned(), "outbox.event.order".to_owned())
        ]
    );
    h.report(0, Ok(()));
    h.report(1, Ok(()));
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(210)));
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delivery_errors_are_counted_by_class() {
    let h = Harness::start(options(PermanentErrorPolicy::DeadLetter), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.settle().await;
    h.report(0, Err(DeliveryError::permanent(PermanentReason::Rejected, "no")));
    h.settle().await;
    h.report(1, Ok(()));
    h.settle().await;
    let text = h.metrics.render();
    assert!(
        text.contains("outboxd_delivery_errors_total{class=\"permanent\"} 1"),
        "{text}"
    );
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_at_once_and_confirms_nothing_more() {
    let mut h = Harness::start(options(PermanentErrorPolicy::Stop), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.transaction(300, 310, &[("b1", "k2")]);
    h.settle().await;
    h.report(0, Ok(()));
    h.settle().await;
    assert_eq!(h.acked(), Some(lsn(210)));
    h.lose_lease.take().unwrap().send(()).unwrap();
    // b1 is never confirmed: the run ended without draining or acknowledging.
    let err = h.run.await.unwrap().unwrap_err();
    assert!(matches!(err, PipelineError::LeaseLost(_)), "{err:?}");
    assert_eq!(*h.acks.lock().unwrap(), [lsn(100), lsn(210)]);
}

#[test]
fn a_bytea_payload_is_its_bytes_and_malformed_hex_is_this_rows_fault() {
    let options = options(PermanentErrorPolicy::Stop);
    let mut table = relation(&["id", "aggregatetype", "aggregateid", "type", "payload"]);
    Arc::make_mut(&mut table).columns[4].type_id = pg_replication::BYTEA_OID;
    let row = |payload: &str| {
        insert(
            &table,
            200,
            0,
            &[Some("b1"), Some("order"), Some("k"), Some("T"), Some(payload)],
        )
    };
    let record = |payload: &str| {
        to_record(&options.mapping, &options.routing, &row(payload), None)
            .unwrap()
            .1
    };
    assert_eq!(
        record("\\x00ff80").unwrap().value.as_deref(),
        Some(&[0x00, 0xff, 0x80][..])
    );
    let err = record("\\x0").unwrap_err();
    assert!(!err.every_row, "{err:?}");
    assert!(
        err.error.contains("payload") && err.error.contains("odd number"),
        "{err:?}"
    );
    assert_eq!(err.id, "b1");
}

/// A sink that stops after a permanent failure reports the records behind
/// it as failed too, possibly before the failed one's own report: the run
/// still names the failed record, not one held back behind it.
#[tokio::test(start_paused = true)]
async fn under_stop_the_run_names_the_earliest_failure_whatever_the_report_order() {
    let h = Harness::start(options(PermanentErrorPolicy::Stop), lsn(100), None, 100);
    h.transaction(200, 210, &[("a1", "k1")]);
    h.transaction(300, 310, &[("b1", "k1")]);
    h.settle().await;
    h.report(
        1,
        Err(DeliveryError::retriable(
            "not sent: an earlier record failed for good",
        )),
    );
    h.report(
        0,
        Err(DeliveryError::permanent(PermanentReason::TooLarge, "too large")),
    );
    let err = h.stop().await.unwrap_err();
    match &err {
        PipelineError::Undeliverable { id, confirmed, .. } => {
            assert_eq!((id.as_str(), *confirmed), ("a1", lsn(100)), "{err}");
        }
        other => panic!("expected Undeliverable, got {other:?}"),
    }
}

/// Debezium's `table.field.event.timestamp` fails on `timestamptz`; here each
/// of `timestamptz`, `timestamp` (UTC) and `bigint` gives the record timestamp,
/// and without a timestamp column the commit time does (not the send time).
#[test]
fn record_timestamp_from_timestamptz_timestamp_or_bigint_else_the_commit_time() {
    let mut options = options(PermanentErrorPolicy::Stop);
    let mut table = relation(&["id", "aggregatetype", "aggregateid", "type", "payload", "ts"]);
    let row = |table: &Arc<Relation>, ts: &str| {
        insert(
            table,
            200,
            0,
            &[
                Some("t1"),
                Some("order"),
                Some("k"),
                Some("T"),
                Some("{}"),
                Some(ts),
            ],
        )
    };
    let commit = PgTimestamp::from_micros(768_000_000_123_456); // 2024-05-02T21:20:00.123456Z
    let commit_ms = 1_714_684_800_123;
    let record = |options: &PipelineOptions, event: &ReplicationEvent| {
        to_record(&options.mapping, &options.routing, event, Some(commit))
            .unwrap()
            .1
    };
    assert_eq!(
        record(&options, &row(&table, "x")).unwrap().timestamp_ms,
        Some(commit_ms)
    );

    options.mapping.timestamp = Some("ts".into());
    for (type_id, text) in [
        (1184, "2024-05-01 14:30:00.123456+02"),
        (1114, "2024-05-01 12:30:00.123456"),
        (20, "1714566600123"),
    ] {
        Arc::make_mut(&mut table).columns[5].type_id = type_id;
        let got = record(&options, &row(&table, text)).unwrap();
        assert_eq!(
            got.timestamp_ms,
            Some(1_714_566_600_123),
            "type {type_id}: {text}"
        );
    }
    // A text column is the table's mistake, not the row's: it stops.
    Arc::make_mut(&mut table).columns[5].type_id = 25;
    let err = record(&options, &row(&table, "2024-05-01 12:30:00")).unwrap_err();
    assert!(
        err.every_row && err.error.contains("must be timestamptz"),
        "{err:?}"
    );
    // A DateStyle other than ISO is this row's error, naming the fix.
    Arc::make_mut(&mut table).columns[5].type_id = 1184;
    let err = record(&options, &row(&table, "Wed May 01 12:30:00 2024 UTC")).unwrap_err();
    assert!(!err.every_row && err.error.contains("DateStyle"), "{err:?}");
}

#[test]
fn key_partition_and_typed_envelope_fields_from_the_row() {
    let mut options = options(PermanentErrorPolicy::Stop);
    options.mapping.key = Some("customer".into());
    options.mapping.additional = ["shard:partition", "version:envelope", "type:envelope:eventType"]
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
    let mut table = relation(&[
        "id",
        "aggregatetype",
        "aggregateid",
        "type",
        "payload",
        "customer",
        "shard",
        "version",
    ]);
    Arc::make_mut(&mut table).columns[4].type_id = 3802; // jsonb
    Arc::make_mut(&mut table).columns[7].type_id = 23; // int4
    let event = insert(
        &table,
        200,
        0,
        &[
            Some("e1"),
            Some("order"),
            Some("order-1"),
            Some("Created"),
            Some(r#"{"a": 1}"#),
            Some("cust-9"),
            Some("4"),
            Some("2"),
        ],
    );
    let record = to_record(&options.mapping, &options.routing, &event, None)
        .unwrap()
        .1
        .unwrap();
    assert_eq!(record.key, Bytes::from_static(b"cust-9"));
    assert_eq!(record.partition, Some(4));
    assert_eq!(
        record.value.as_deref(),
        Some(&br#"{"payload":{"a": 1},"version":2,"eventType":"Created"}"#[..])
    );
}
