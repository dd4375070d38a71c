//! pg-replication's integration tests, in one binary, against throwaway clusters.

mod budget;
mod connection;
mod copy;
mod copy_both;
mod failover;
mod payloads;
mod plaintext;
mod positions;
mod publication_changes;
mod streaming;
mod support;
mod tls;
