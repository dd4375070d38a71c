//! outboxd end to end: a throwaway PostgreSQL, librdkafka's mock cluster, the
//! pipeline in process or the `outboxd` binary as a child process.

mod admin;
mod check;
mod config;
mod conformance;
mod e2e;
mod failover;
mod ha;
mod memory;
mod ops;
mod support;
