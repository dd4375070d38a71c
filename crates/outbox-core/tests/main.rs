//! outbox-core's tests, in one binary.

mod ack;
mod routing;
