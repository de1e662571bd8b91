//! shared test helpers
pub mod exec;
