//! outboxd end to end: a throwaway PostgreSQL, librdkafka's mock cluster, the
//! pipeline in process or the `outboxd` binary as a child process.

mod conformance;
mod e2e;
mod ops;
mod support;
