//! The harness's own tests, in one binary.

mod cluster;
mod proxy;
