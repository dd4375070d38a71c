//! # outboxd: the service
//!
//! Place in outboxd: the binary's library half. It reads the configuration
//! ([`config`]), wires `pg-replication`'s stream through `outbox-core`'s
//! mapping, routing and `AckTracker` into any sink ([`pipeline`]; the one
//! module that names brokers is [`sink`], which builds the configured one), keeps the
//! checkpoint ([`checkpoint`]), and implements the commands (`run`,
//! `setup`, `demo`). `main.rs` only parses flags, sets up logging and
//! signals, and calls in here.

pub mod admin;
pub mod check;
pub mod checkpoint;
pub mod checkpoint_writer;
pub mod config;
pub mod demo;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod run;
pub mod setup;
pub mod sink;
pub mod source;
