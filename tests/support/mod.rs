//! Shared harness code for the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod ports;
