//! dns strategy (being written).
