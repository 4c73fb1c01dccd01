//! Transports: how commands reach a guest.

pub mod shell;
pub mod slot;
