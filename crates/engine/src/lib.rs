//! The engine of nixos-test-ng: configuration, machines and their backends, transports,
//! VLANs, logging and reports. It knows nothing about Python; `crates/python` wraps it.
//!
//! Data flow: [`config::Config`] → [`driver::Driver`] (VLANs, machines, global timeout,
//! cleanup) → [`machine::Machine`] = backend ([`qemu`]) + transport ([`transport::shell`]);
//! everything that happens is reported through [`log::Logger`].

#![warn(missing_docs)]
#![allow(missing_docs)] // struct fields of error variants are self-describing

pub mod config;
pub mod console;
pub mod driver;
pub mod error;
pub mod interrupt;
pub mod junit;
pub mod kind;
pub mod log;
pub mod machine;
pub mod names;
pub mod nspawn;
pub mod process;
pub mod qemu;
pub mod report;
pub mod retry;
pub mod screen;
pub mod terminal;
pub mod trace;
pub mod transport;
pub mod vlan;
pub mod xml_log;

pub use error::{Error, Result};
