//! The AckTracker against a model simple enough to be obviously right.

use outbox_core::{AckError, AckTracker, Lsn, TxSeq};
use proptest::collection::vec;
use proptest::prelude::*;

fn lsn(raw: u64) -> Lsn {
    Lsn::new(raw)
}

#[test]
fn confirmed_is_the_end_of_the_delivered_prefix_not_the_last_report() {
    let mut t: AckTracker = AckTracker::new(lsn(100));
    let a = t.push(lsn(200), 2, ()).unwrap();
    let b = t.push(lsn(300), 1, ()).unwrap();
    t.delivered(b).unwrap();
    assert_eq!(t.confirmed(), lsn(100), "b is delivered but a is not");
    t.delivered(a).unwrap();
    assert_eq!(t.confirmed(), lsn(100), "a has one record left");
    t.delivered(a).unwrap();
    assert_eq!(t.confirmed(), lsn(300));
    assert_eq!((t.pending_transactions(), t.in_flight_records()), (0, 0));
}

#[test]
fn transaction_without_records_is_delivered_once_its_predecessors_are() {
    let mut t: AckTracker = AckTracker::new(lsn(0));
    let a = t.push(lsn(10), 1, ()).unwrap();
    t.push(lsn(20), 0, ()).unwrap();
    assert_eq!(t.confirmed(), lsn(0));
    t.delivered(a).unwrap();
    assert_eq!(t.confirmed(), lsn(20));
    t.push(lsn(30), 0, ()).unwrap();
    assert_eq!(t.confirmed(), lsn(30));
}

#[test]
fn records_in_flight_before_commit_hold_the_transaction_open() {
    let mut t: AckTracker = AckTracker::new(lsn(0));
    let tx = t.begin(());
    t.record(tx).unwrap();
    t.delivered(tx).unwrap();
    assert_eq!(t.confirmed(), lsn(0), "delivered, but the commit is not read yet");
    t.record(tx).unwrap();
    t.commit(tx, lsn(50)).unwrap();
    assert_eq!(t.confirmed(), lsn(0));
    t.delivered(tx).unwrap();
    assert_eq!(t.confirmed(), lsn(50));
}

#[test]
fn failed_record_stops_progress_for_good() {
    let mut t: AckTracker = AckTracker::new(lsn(0));
    let a = t.push(lsn(10), 1, ()).unwrap();
    let b = t.push(lsn(20), 2, ()).unwrap();
    let c = t.push(lsn(30), 1, ()).unwrap();
    t.delivered(a).unwrap();
    t.failed(b).unwrap();
    t.delivered(b).unwrap();
    t.delivered(c).unwrap();
    assert!(t.has_failed());
    assert_eq!(t.confirmed(), lsn(10));
}

#[test]
fn caller_mistakes_are_errors_not_progress() {
    let mut t: AckTracker = AckTracker::new(lsn(100));
    let a = t.push(lsn(200), 1, ()).unwrap();
    assert_eq!(
        t.push(lsn(150), 1, ()),
        Err(AckError::OutOfOrder {
            seq: 1,
            end_lsn: lsn(150),
            previous: lsn(200)
        })
    );
    assert_eq!(t.commit(a, lsn(300)), Err(AckError::AlreadyCommitted(0)));
    assert_eq!(t.record(a), Err(AckError::AlreadyCommitted(0)));
    t.delivered(a).unwrap();
    assert_eq!(
        t.delivered(a),
        Err(AckError::Unknown(0)),
        "a is confirmed and gone"
    );
    let b = t.begin(());
    assert_eq!(t.delivered(b), Err(AckError::TooManyDeliveries(1)));
    assert_eq!(t.confirmed(), lsn(200));
}

/// What the model tracks of each transaction.
#[derive(Debug, Clone, Default)]
struct ModelTx {
    end: Option<u64>,
    sent: u64,
    reported: u64,
    failed: bool,
}

/// The confirmed position by definition: walk from the start, stop at the
/// first transaction not committed, not fully reported, or failed.
fn model_confirmed(start: u64, txs: &[ModelTx]) -> u64 {
    let mut confirmed = start;
    for tx in txs {
        match tx.end {
            Some(end) if tx.reported == tx.sent && !tx.failed => confirmed = end,
            _ => break,
        }
    }
    confirmed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Random interleavings of begin / record / commit / delivered / failed,
    /// each applied to the tracker and the model; after every step the
    /// tracker's confirmed position equals the model's.
    #[test]
    fn tracker_matches_the_model(ops in vec((0u8..6, any::<u16>()), 0..300)) {
        let start = 1_000u64;
        let mut tracker: AckTracker = AckTracker::new(lsn(start));
        let mut model: Vec<ModelTx> = Vec::new();
        let mut seqs: Vec<TxSeq> = Vec::new();
        let mut next_end = start;
        for (kind, choice) in ops {
            let pick = |n: usize| usize::from(choice) % n.max(1);
            match kind {
                0 => {
                    seqs.push(tracker.begin(()));
                    model.push(ModelTx::default());
                }
                1 => {
                    // record on an open transaction
                    let open: Vec<usize> = (0..model.len()).filter(|&i| model[i].end.is_none()).collect();
                    if open.is_empty() { continue; }
                    let i = open[pick(open.len())];
                    tracker.record(seqs[i]).unwrap();
                    model[i].sent += 1;
                }
                2 => {
                    // commit the oldest open transaction (commits come in stream order)
                    let Some(i) = (0..model.len()).find(|&i| model[i].end.is_none()) else { continue };
                    next_end += 1 + u64::from(choice % 100);
                    tracker.commit(seqs[i], lsn(next_end)).unwrap();
                    model[i].end = Some(next_end);
                }
                3 | 4 => {
                    // report one outstanding record, in any order
                    let outstanding: Vec<usize> = (0..model.len()).filter(|&i| model[i].reported < model[i].sent).collect();
                    if outstanding.is_empty() { continue; }
                    let i = outstanding[pick(outstanding.len())];
                    tracker.delivered(seqs[i]).unwrap();
                    model[i].reported += 1;
                }
                _ => {
                    // rarely, a failure
                    if choice % 16 != 0 { continue; }
                    let outstanding: Vec<usize> = (0..model.len()).filter(|&i| model[i].reported < model[i].sent).collect();
                    if outstanding.is_empty() { continue; }
                    let i = outstanding[pick(outstanding.len())];
                    tracker.failed(seqs[i]).unwrap();
                    model[i].reported += 1;
                    model[i].failed = true;
                }
            }
            prop_assert_eq!(tracker.confirmed(), lsn(model_confirmed(start, &model)));
            let in_flight: u64 = model.iter().map(|t| t.sent - t.reported).sum();
            prop_assert_eq!(tracker.in_flight_records(), in_flight);
        }
    }
}

#[test]
fn confirmed_transactions_hand_back_their_data_in_stream_order() {
    let mut t: AckTracker<&str> = AckTracker::new(lsn(0));
    let a = t.begin("a");
    t.record(a).unwrap();
    t.commit(a, lsn(10)).unwrap();
    let b = t.push(lsn(20), 1, "b").unwrap();
    t.push(lsn(30), 0, "c").unwrap();
    *t.data_mut(b).unwrap() = "b2";
    t.delivered(b).unwrap();
    assert_eq!(t.take_confirmed().count(), 0, "a holds the prefix back");
    t.delivered(a).unwrap();
    assert_eq!(
        t.take_confirmed().collect::<Vec<_>>(),
        vec![(lsn(10), "a"), (lsn(20), "b2"), (lsn(30), "c")]
    );
    assert_eq!(t.data_mut(b), Err(AckError::Unknown(1)));
}
