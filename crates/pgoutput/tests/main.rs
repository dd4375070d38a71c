//! The pgoutput crate's integration tests, in one binary.

mod capture;
mod copydata;
mod decoder_state;
mod fixture;
mod fixtures;
mod robustness;
mod roundtrip;
