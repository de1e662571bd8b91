//! coordinator library
pub mod nftables;
