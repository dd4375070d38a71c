//! `Inbox::process` against a real PostgreSQL: claim and effect together.

use std::time::Duration;

use outbox_inbox::{Envelope, Inbox, Lsn, Outcome, Position, ProcessError};

use crate::support::{applier, applying, cluster, count, event};

#[tokio::test]
async fn a_new_message_is_processed_and_its_redelivery_is_a_duplicate() {
    let (_cluster, mut client) = cluster().await;
    let inbox = Inbox::new();
    let message = event("e-1", "order-1", 0x1_0000_0100, 2);
    let first = inbox
        .process(&mut client, "billing", &message, |tx| {
            applier(tx, "e-1".into(), "order-1".into(), 5)
        })
        .await
        .unwrap();
    assert_eq!(first, Outcome::Processed(()));
    let again = inbox
        .process(&mut client, "billing", &message, |tx| {
            applier(tx, "e-1".into(), "order-1".into(), 5)
        })
        .await
        .unwrap();
    assert_eq!(again, Outcome::Duplicate);
    assert_eq!(count(&client, "select count(*) from applied").await, 1);
    assert_eq!(count(&client, "select total from projection").await, 5);
    let row = client
        .query_one(
            "select consumer, message_id, aggregate_id, lsn::text, event_index, outcome, processed_at is not null from inbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "billing");
    assert_eq!(row.get::<_, String>(1), "e-1");
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("order-1"));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("1/100"));
    assert_eq!(row.get::<_, Option<i64>>(4), Some(2));
    assert_eq!(row.get::<_, String>(5), "processed");
    assert!(row.get::<_, bool>(6));

    // Another consumer has its own dedupe scope.
    let other = inbox
        .process(&mut client, "shipping", &message, |tx| {
            applier(tx, "e-1".into(), "order-1".into(), 5)
        })
        .await
        .unwrap();
    assert_eq!(other, Outcome::Processed(()));
}

#[tokio::test]
async fn a_handler_error_leaves_neither_the_effect_nor_the_claim() {
    let (_cluster, mut client) = cluster().await;
    let inbox = Inbox::new();
    let message = Envelope::new("e-err");
    let result = inbox
        .process(&mut client, "billing", &message, |tx| {
            Box::pin(async move {
                crate::support::apply(tx, "e-err", "order-1", 7)
                    .await
                    .map_err(|e| e.to_string())?;
                Err::<(), _>("the handler gave up after its effect".to_owned())
            })
        })
        .await;
    match result {
        Err(ProcessError::Handler(message)) => assert_eq!(message, "the handler gave up after its effect"),
        other => panic!("expected the handler's error, got {other:?}"),
    }
    assert_eq!(
        count(&client, "select count(*) from applied").await,
        0,
        "the effect was rolled back"
    );
    assert_eq!(count(&client, "select count(*) from projection").await, 0);
    assert_eq!(
        count(&client, "select count(*) from inbox").await,
        0,
        "the claim was rolled back"
    );

    // The re-delivery is processed, once.
    let retry = inbox
        .process(&mut client, "billing", &message, |tx| {
            applier(tx, "e-err".into(), "order-1".into(), 7)
        })
        .await
        .unwrap();
    assert_eq!(retry, Outcome::Processed(()));
    assert_eq!(count(&client, "select count(*) from applied").await, 1);
    assert_eq!(count(&client, "select count(*) from inbox").await, 1);
}

/// Two connections take the same message at once: the second claim waits for
/// the first transaction and then sees it.
#[tokio::test]
async fn two_consumers_racing_on_one_message_apply_it_once() {
    let (cluster, mut a) = cluster().await;
    let mut b = cluster.connect().await.unwrap();
    let inbox = Inbox::new();
    let message = Envelope::new("e-race");
    let slow = inbox.process(&mut a, "billing", &message, |tx| {
        Box::pin(async move {
            crate::support::apply(tx, "e-race", "order-1", 1).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, tokio_postgres::Error>("a")
        })
    });
    let late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        inbox
            .process(&mut b, "billing", &message, |tx| {
                Box::pin(async move {
                    crate::support::apply(tx, "e-race", "order-1", 1).await?;
                    Ok::<_, tokio_postgres::Error>("b")
                })
            })
            .await
    };
    let (first, second) = tokio::join!(slow, late);
    assert_eq!(first.unwrap(), Outcome::Processed("a"));
    assert_eq!(second.unwrap(), Outcome::Duplicate);
    assert_eq!(count(&a, "select count(*) from applied").await, 1);
}

/// The waiting claim wins when the first transaction rolls back.
#[tokio::test]
async fn a_rolled_back_claim_lets_the_waiting_consumer_process_the_message() {
    let (cluster, mut a) = cluster().await;
    let mut b = cluster.connect().await.unwrap();
    let inbox = Inbox::new();
    let message = Envelope::new("e-retry");
    let failing = inbox.process(&mut a, "billing", &message, |tx| {
        Box::pin(async move {
            crate::support::apply(tx, "e-retry", "order-1", 1)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(400)).await;
            Err::<(), _>("failed".to_owned())
        })
    });
    let late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        inbox
            .process(&mut b, "billing", &message, |tx| {
                applier(tx, "e-retry".into(), "order-1".into(), 1)
            })
            .await
    };
    let (first, second) = tokio::join!(failing, late);
    assert!(matches!(first, Err(ProcessError::Handler(_))));
    assert_eq!(second.unwrap(), Outcome::Processed(()));
    assert_eq!(count(&a, "select count(*) from applied").await, 1);
    assert_eq!(count(&a, "select count(*) from inbox").await, 1);
}

#[tokio::test]
async fn the_aggregate_guard_rejects_a_stale_event() {
    let (_cluster, mut client) = cluster().await;
    let inbox = Inbox::new().with_aggregate_guard();
    let apply = |id: &str, message: &Envelope| applying(id, message.aggregate_id.as_deref().unwrap(), 1);
    let newer = event("e-newer", "order-1", 0x200, 0);
    let older = event("e-older", "order-1", 0x100, 5);
    assert_eq!(
        inbox
            .process(&mut client, "billing", &newer, apply("e-newer", &newer))
            .await
            .unwrap(),
        Outcome::Processed(())
    );
    // An older event arriving after a newer one of its aggregate: refused,
    // its handler never runs.
    let stale = inbox
        .process(&mut client, "billing", &older, apply("e-older", &older))
        .await
        .unwrap();
    assert_eq!(
        stale,
        Outcome::Stale {
            last: Position {
                commit_lsn: Lsn::new(0x200),
                index: 0
            }
        }
    );
    assert_eq!(
        count(&client, "select count(*) from applied where event_id = 'e-older'").await,
        0
    );
    let outcome: String = client
        .query_one("select outcome from inbox where message_id = 'e-older'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "stale", "the refusal is recorded");
    // Its re-delivery is a plain duplicate.
    assert_eq!(
        inbox
            .process(&mut client, "billing", &older, apply("e-older", &older))
            .await
            .unwrap(),
        Outcome::Duplicate
    );
    // Same transaction, later index: newer. Same position under another id: stale.
    let next = event("e-next", "order-1", 0x200, 1);
    assert!(inbox
        .process(&mut client, "billing", &next, apply("e-next", &next))
        .await
        .unwrap()
        .is_processed());
    let copy = event("e-copy", "order-1", 0x200, 1);
    assert!(matches!(
        inbox
            .process(&mut client, "billing", &copy, apply("e-copy", &copy))
            .await
            .unwrap(),
        Outcome::Stale { .. }
    ));
    // Other aggregates and other consumers are not affected.
    let other = event("e-other", "order-2", 0x100, 0);
    assert!(inbox
        .process(&mut client, "billing", &other, apply("e-other", &other))
        .await
        .unwrap()
        .is_processed());
    assert!(inbox
        .process(&mut client, "shipping", &older, apply("e-older", &older))
        .await
        .unwrap()
        .is_processed());
    // Events without a position are not guarded.
    let plain = Envelope::new("e-plain").with_aggregate("order-1");
    assert!(inbox
        .process(&mut client, "billing", &plain, apply("e-plain", &plain))
        .await
        .unwrap()
        .is_processed());

    let last: (String, i64) = client
        .query_one(
            "select lsn::text, event_index from inbox_aggregate where consumer = 'billing' and aggregate_id = 'order-1'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(last, ("0/200".to_owned(), 1));
}

/// The control for the test above: dedupe alone lets a stale event through.
#[tokio::test]
async fn without_the_guard_a_stale_event_is_applied() {
    let (_cluster, mut client) = cluster().await;
    let inbox = Inbox::new();
    let newer = event("e-newer", "order-1", 0x200, 0);
    let older = event("e-older", "order-1", 0x100, 0);
    for (id, message) in [("e-newer", &newer), ("e-older", &older)] {
        let outcome = inbox
            .process(&mut client, "billing", message, |tx| {
                applier(tx, id.into(), "order-1".into(), 1)
            })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Processed(()));
    }
    assert_eq!(count(&client, "select count(*) from applied").await, 2);
}
