//! Shared harness code for the integration tests.

#![allow(dead_code)]

pub mod kube_api;
pub mod kube_objects;
