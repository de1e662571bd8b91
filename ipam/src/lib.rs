//! coordinator-ipam library
