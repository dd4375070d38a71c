//! A failover under a running outboxd: the cluster's data directory is
//! copied, the copy promoted (timeline 2) and written to, and outboxd's
//! connections are switched to it through a fault proxy.

use std::collections::HashSet;
use std::time::Duration;

use testkit::FaultProxy;

use crate::support::{figures, writer, Env};

/// Found in review: a reconnect resumed on the new timeline at the position
/// acknowledged on the old one, so the server skipped every transaction the
/// new primary committed below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_every_row_committed_on_the_new_primary_arrives() {
    let mut env = Env::start("");
    // On both timelines: committed before the copy.
    let shared = writer(env.pg.config("postgres", "postgres"), 0, 5, 1, 1, Duration::ZERO).await;
    let standby = env.pg.standby_copy().unwrap();
    let proxy = FaultProxy::start(("127.0.0.1", env.pg.port())).unwrap();
    env.postgres_url = Some(format!(
        "postgresql://postgres@127.0.0.1:{}/postgres",
        proxy.port()
    ));
    let outboxd = env.spawn_streaming();

    // The old primary goes on: timeline 1 only, delivered before the switch.
    let old_only = writer(env.pg.config("postgres", "postgres"), 1, 60, 1, 1, Duration::ZERO).await;
    assert_eq!(env.read(&env.topic, 65).await.len(), 65);

    // Failover: the copy is promoted and takes writes at LSNs the old
    // timeline already used; outboxd's connections go to it.
    standby.psql("select pg_promote()").unwrap();
    let new = writer(
        standby.config("postgres", "postgres"),
        2,
        20,
        1,
        1,
        Duration::ZERO,
    )
    .await;
    proxy.redirect(("127.0.0.1", standby.port())).unwrap();

    // The copy's slot is where the original's was at the copy: the 5 shared
    // rows are re-sent (duplicates), then every row of the new primary.
    let read = env.read(&env.topic, 90).await;
    let ids: HashSet<&str> = read.iter().filter_map(|r| r.header("id")).collect();
    let missing: Vec<&String> = new.iter().filter(|id| !ids.contains(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "rows of the new primary never arrived: {missing:?}"
    );
    let written: Vec<String> = shared.iter().chain(&old_only).chain(&new).cloned().collect();
    let f = figures(&written, &read);
    assert_eq!((f.lost, f.order_violations), (0, 0), "{f:?}");
    assert!(f.duplicates <= shared.len(), "{f:?}");
    // The proxy's redirect cuts every connection at once, so either the
    // stream reports the new timeline to `run` ("restarting from the slot's
    // position") or the lease connection's loss ends the pipeline first and
    // the stream's error is logged as it shuts down; the rows above show
    // the restart lost nothing either way.
    // If the lease's loss stopped the stream before it met the new server,
    // the restart names the timeline when it sets the checkpoint aside.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = outboxd.log();
        if log.contains("PostgreSQL is now on timeline 2, outboxd streamed from timeline 1")
            || log.contains("checkpoint_timeline=1 timeline=2")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the timeline change is not in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    outboxd.terminate();
}
