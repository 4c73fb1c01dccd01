//! The engine of nixos-test-ng: configuration, machines and their backends, transports,
//! VLANs, logging and reports. It knows nothing about Python; `crates/python` wraps it.
//!
//! Data flow: [`config::Config`] → [`driver::Driver`] (VLANs, machines, global timeout,
//! cleanup) → [`machine::Machine`] (the lifecycle, written once) over a [`backend::Backend`]
//! ([`qemu`], [`nspawn`], [`firecracker`], [`cloud_hypervisor`]: launch and stop, plus
//! capabilities) and a transport (a [`transport::connector::Connector`]'s stream, the
//! [`transport::shell`] protocol);
//! everything that happens is an [`event::Event`] the [`log::Logger`] hands to the reporters
//! [`reporters`] built for the run. `docs/architecture.md` has the map and the layers.

#![warn(missing_docs)]
#![allow(missing_docs)] // struct fields of error variants are self-describing

pub mod backend;
pub mod cloud_hypervisor;
pub mod config;
pub mod console;
pub mod driver;
pub mod error;
pub mod event;
pub mod exit_status;
#[cfg(test)]
pub mod fake;
pub mod firecracker;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod interrupt;
pub mod junit;
pub mod kind;
pub mod log;
pub mod machine;
pub mod names;
pub mod netem;
pub mod nspawn;
pub mod private;
pub mod process;
pub mod qemu;
pub mod report;
pub mod reporters;
pub mod retry;
pub mod screen;
pub mod terminal;
pub mod trace;
pub mod transport;
pub mod vlan;
pub mod vmm;
pub mod xml_log;

pub use error::{Error, Result};
