//! The core (being written).
