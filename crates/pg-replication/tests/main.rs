//! pg-replication's integration tests, in one binary, against throwaway clusters.

mod connection;
mod copy;
mod copy_both;
mod payloads;
mod plaintext;
mod positions;
mod streaming;
mod support;
mod tls;
