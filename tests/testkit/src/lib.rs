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
//! ```no_run
//! # async fn example() -> Result<(), testkit::HarnessError> {
//! let cluster = testkit::PgCluster::start()?;
//! cluster.psql("create table outbox (id int)")?;
//! let client = cluster.connect().await?;
//! # Ok(()) }
//! ```

mod binaries;
mod cluster;
mod error;
mod os_user;

pub use cluster::{process_alive, PasswordAuth, PgCluster, PgClusterBuilder, StopMode};
pub use error::HarnessError;
