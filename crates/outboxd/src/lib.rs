//! # outboxd: the service
//!
//! Place in outboxd: the binary's library half. It reads the configuration
//! ([`config`]), wires `pg-replication`'s stream through `outbox-core`'s
//! mapping, routing and `AckTracker` into a sink ([`pipeline`]), keeps the
//! checkpoint ([`checkpoint`]), and implements the commands (`run`,
//! `setup`, `demo`). `main.rs` only parses flags, sets up logging and
//! signals, and calls in here.

pub mod admin;
pub mod check;
pub mod checkpoint;
pub mod config;
mod config_checks;
pub mod demo;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod run;
pub mod setup;
