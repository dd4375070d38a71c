//! Purging old claims, in batches.

use std::time::Duration;

use outbox_inbox::{purge, Envelope, Inbox, Outcome};

use crate::support::{applier, cluster, count};

#[tokio::test]
async fn purge_deletes_only_claims_older_than_the_window_in_batches() {
    let (_cluster, mut client) = cluster().await;
    let inbox = Inbox::new();
    for consumer in ["billing", "shipping"] {
        for i in 0..20 {
            let id = format!("e-{i}");
            let outcome = inbox
                .process(&mut client, consumer, &Envelope::new(id.clone()), |tx| {
                    applier(tx, id, "order-1".into(), 1)
                })
                .await
                .unwrap();
            assert!(outcome.is_processed());
        }
    }
    // 13 of each consumer's claims are two days old.
    client
        .batch_execute(
            "update inbox set processed_at = now() - interval '2 days' where substr(message_id, 3)::int < 13",
        )
        .await
        .unwrap();

    let deleted = purge(&client, Duration::from_secs(86_400), Some("billing"), 5)
        .await
        .unwrap();
    assert_eq!(
        deleted, 13,
        "three full batches of 5 would be 15: the last batch is partial"
    );
    assert_eq!(
        count(&client, "select count(*) from inbox where consumer = 'billing'").await,
        7
    );
    assert_eq!(
        count(&client, "select count(*) from inbox where consumer = 'shipping'").await,
        20
    );

    let deleted = purge(&client, Duration::from_secs(86_400), None, 4)
        .await
        .unwrap();
    assert_eq!(deleted, 13);
    assert_eq!(count(&client, "select count(*) from inbox").await, 14);
    assert_eq!(
        count(
            &client,
            "select count(*) from inbox where processed_at < now() - interval '1 day'"
        )
        .await,
        0
    );

    // Why the window must cover every re-delivery: a purged id is new again.
    let outcome = inbox
        .process(&mut client, "billing", &Envelope::new("e-0"), |tx| {
            applier(tx, "e-0".into(), "order-1".into(), 1)
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Processed(()));
    let recent = inbox
        .process(&mut client, "billing", &Envelope::new("e-19"), |tx| {
            applier(tx, "e-19".into(), "order-1".into(), 1)
        })
        .await
        .unwrap();
    assert_eq!(
        recent,
        Outcome::Duplicate,
        "a claim inside the window still deduplicates"
    );
}
