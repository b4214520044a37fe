//! kubernetes strategy (being written).
