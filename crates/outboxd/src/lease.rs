//! The lease: which of several instances on one slot streams.
//!
//! Several `outboxd run` instances may point at the same slot (a rolling
//! deploy, a standby for failover). Before streaming, an instance takes a
//! session-level PostgreSQL advisory lock derived from the slot's name, on a
//! normal connection it keeps open for as long as it leads. An instance that
//! cannot get it is a **standby**: it says once whom it waits for, polls the
//! lock, and takes over when the leader's session ends (a stop, a crash, a
//! dropped connection).
//!
//! Why this is safe: only one walsender can hold a slot at a time, so two
//! instances can never both confirm positions on it; the lease only decides
//! who tries, so standbys do not fight over the slot (`slot is active for PID
//! …` retries) and take over quickly. A leader that may have lost its lease —
//! its lease connection closed, or a liveness query unanswered for
//! [`LIVENESS_TIMEOUT`] — stops confirming at once: the pipeline ends without
//! a final acknowledgement. The server is told to notice a vanished leader
//! quickly too (TCP keepalives on the lease session: about 11 s), so a
//! leader cut off from the network loses the lock after it has stopped
//! confirming, never before.

use std::time::Duration;

use pg_replication::ReplicationConfig;
use tokio_postgres::Client;
use tracing::{info, warn};

/// How often a standby tries the lock.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often a leader checks its lease connection.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// A liveness query unanswered this long means the lease may be lost.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);

/// The two advisory-lock keys of a slot: a fixed namespace and the slot's
/// name, both hashed by the server (`hashtext`), so any client computes them
/// the same way (`select pg_try_advisory_lock(hashtext('outboxd'), hashtext(slot))`).
const LOCK: &str = "pg_try_advisory_lock(hashtext('outboxd'), hashtext($1))";

/// A held lease; dropping it closes the session and frees the lock.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    slot: String,
}

/// Who holds the lease, as far as the catalog tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder's server process id.
    pub pid: i32,
    /// Its client address (`local` for a Unix socket).
    pub client: String,
    /// Its `application_name`.
    pub application: String,
    /// When its session started.
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} from {} (server pid {}, since {})",
            self.application, self.client, self.pid, self.since
        )
    }
}

/// What [`acquire`] ended with.
#[derive(Debug)]
pub enum Acquired {
    /// This instance leads.
    Leader(Lease),
    /// Shutdown was requested while waiting.
    Shutdown,
}

/// Takes the lease for `slot`, waiting as a standby while another instance
/// holds it; `on_standby` is called once when this instance starts waiting.
/// Connection failures are retried (the server may be restarting).
pub async fn acquire(
    config: &ReplicationConfig,
    slot: &str,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    mut on_standby: impl FnMut(Option<&Holder>),
) -> Acquired {
    let mut standby = false;
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match config.connect_catalog().await {
                Ok(c) => Some(c),
                Err(err) => {
                    warn!(error = %err, "cannot connect for the lease, retrying");
                    None
                }
            };
            if let Some(c) = &client {
                // Let the server notice a vanished leader within about 11 s.
                let _ = c
                    .batch_execute(
                        "set tcp_keepalives_idle = 5; set tcp_keepalives_interval = 2; \
                         set tcp_keepalives_count = 3",
                    )
                    .await;
            }
        }
        if let Some(c) = &client {
            match c.query_one(&format!("select {LOCK}"), &[&slot]).await {
                Ok(row) if row.get::<_, bool>(0) => {
                    if standby {
                        info!(slot = %slot, "the lease is free: taking over");
                    }
                    return Acquired::Leader(Lease {
                        client: client.take().expect("checked above"),
                        slot: slot.to_owned(),
                    });
                }
                Ok(_) => {
                    if !standby {
                        standby = true;
                        let holder = holder(c, slot).await;
                        match &holder {
                            Some(h) => {
                                info!(slot = %slot, holder = %h, "standby: another instance holds the lease")
                            }
                            None => info!(slot = %slot, "standby: another instance holds the lease"),
                        }
                        on_standby(holder.as_ref());
                    }
                }
                Err(err) => {
                    warn!(error = %err, "cannot query the lease, retrying");
                    client = None;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = &mut shutdown => return Acquired::Shutdown,
        }
    }
}

/// The session holding `slot`'s lease, if any.
pub async fn holder(client: &Client, slot: &str) -> Option<Holder> {
    let row = client
        .query_opt(
            "select a.pid, coalesce(host(a.client_addr), 'local'), a.application_name, \
                    to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') \
             from pg_locks l join pg_stat_activity a on a.pid = l.pid \
             where l.locktype = 'advisory' and l.granted \
               and l.classid = hashtext('outboxd')::oid and l.objid = hashtext($1)::oid and l.objsubid = 2 \
             limit 1",
            &[&slot],
        )
        .await
        .ok()??;
    Some(Holder {
        pid: row.get(0),
        client: row.get(1),
        application: row.get(2),
        since: row.get(3),
    })
}

impl Lease {
    /// Resolves when the lease may have been lost: the session closed, or a
    /// liveness query went unanswered for [`LIVENESS_TIMEOUT`].
    pub async fn lost(&self) -> String {
        let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
        loop {
            tick.tick().await;
            if self.client.is_closed() {
                return "the lease connection closed".into();
            }
            match tokio::time::timeout(LIVENESS_TIMEOUT, self.client.simple_query("select 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return format!("the lease connection failed: {err}"),
                Err(_) => {
                    return format!(
                        "the lease connection did not answer for {}s",
                        LIVENESS_TIMEOUT.as_secs()
                    )
                }
            }
        }
    }

    /// The slot it is for.
    pub fn slot(&self) -> &str {
        &self.slot
    }
}
