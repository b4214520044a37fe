//! placeholder
#![cfg(feature = "daemon")]
mod support;
