//! outboxd end to end: a throwaway PostgreSQL, librdkafka's mock cluster, the
//! pipeline in process or the `outboxd` binary as a child process.

mod admin;
mod bullmq;
mod check;
mod config;
mod conformance;
mod conformance_rabbitmq;
mod conformance_redis;
mod e2e;
mod failover;
mod ha;
mod memory;
mod ops;
mod router;
mod support;
