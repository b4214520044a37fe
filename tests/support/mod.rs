//! Shared harness code for the integration tests.
#![allow(dead_code)]

pub mod daemon;
#[cfg(feature = "kubernetes")]
pub mod kube_api;
#[cfg(feature = "kubernetes")]
pub mod kube_objects;
pub mod ports;
