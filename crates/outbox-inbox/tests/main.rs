//! outbox-inbox against real PostgreSQL clusters (testkit) and librdkafka's
//! mock cluster.

mod envelope;
mod kafka;
mod process;
mod purge;
mod rabbitmq;
mod support;
