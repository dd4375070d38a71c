//! outboxd end to end: a throwaway PostgreSQL, librdkafka's mock cluster, the
//! pipeline in process or the `outboxd` binary as a child process.

mod e2e;
mod failover;
mod memory;
mod ops;
mod support;
