//! coordinator library
pub mod announce;
pub mod detect;
pub mod macprefix;
