//! Transports: how commands reach a guest.

pub mod interact;
pub mod shell;
pub mod slot;
