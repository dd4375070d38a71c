//! # testkit: real services for outboxd's tests
//!
//! Every integration test of the workspace talks to a real PostgreSQL, never a
//! mock. [`PgCluster::start`] runs `initdb` into a temporary directory and
//! starts a private server from the installed binaries: `wal_level=logical`,
//! replication slots and senders enabled, a free TCP port on 127.0.0.1, its
//! own Unix-socket directory, trust authentication (plus users with md5 or
//! SCRAM passwords on demand). Dropping it stops the server and removes the
//! directory. Tests may start as many clusters as they like, in parallel.
//! When the tests run as root the server runs as the OS user `postgres`.
//!
//! Process work (start, stop, `psql`, configuration) is synchronous so that
//! plain `#[test]`s and `#[tokio::test]`s can both use it; only
//! [`PgCluster::connect`] is async.
//!
//! ```no_run
//! # async fn example() -> Result<(), testkit::HarnessError> {
//! use testkit::{PasswordAuth, PgCluster, StopMode};
//!
//! let cluster = PgCluster::start()?;
//! cluster.psql("create table outbox (id int)")?;
//! let client = cluster.connect().await?;
//!
//! // Non-default settings, a password user, a crash and recovery:
//! let tuned = PgCluster::builder().setting("wal_sender_timeout", "2s").start()?;
//! tuned.create_user("outboxd", "secret", PasswordAuth::ScramSha256)?;
//! tuned.restart(StopMode::Immediate)?;
//! let url = tuned.url("outboxd", "postgres");
//! # Ok(()) }
//! ```
//!
//! [`FaultProxy`] is a TCP proxy to put between a client and a server (or a
//! broker) to cut, black-hole or redirect its connections: outages and
//! failovers without stopping the real server.
//!
//! Failures come back as [`HarnessError`]s that say what went wrong and, where
//! the cause is the machine (no PostgreSQL installed, no `postgres` OS user),
//! how to fix it; a server that will not start is reported with its log.

mod binaries;
mod cluster;
pub mod conformance;
mod error;
pub mod kafka;
mod os_user;
mod process;
mod proxy;
pub mod rabbitmq;

pub use cluster::{PasswordAuth, PgCluster, PgClusterBuilder, StopMode};
pub use error::HarnessError;
pub use process::process_alive;
pub use proxy::FaultProxy;
