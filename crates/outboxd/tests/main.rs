//! outboxd end to end: a throwaway PostgreSQL, librdkafka's mock cluster, the
//! pipeline in process or the `outboxd` binary as a child process.

mod bullmq;
mod conformance;
mod conformance_redis;
mod e2e;
mod ops;
mod support;
