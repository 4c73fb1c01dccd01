//! What the VMM backends driven through a REST API (Firecracker, Cloud Hypervisor) share:
//! an HTTP/1.1 client over a unix socket (`http.rs`), which binary runs (`binary.rs`),
//! waiting for the API socket (`api_socket.rs`), the machine's configuration as its start
//! script prints it (`spec.rs`), and the VLAN NICs as TAP devices in the run's network
//! namespace (`tap.rs`, `nics.rs`), the API calls and their errors (`api.rs`), the launch
//! itself (`launch.rs`), and the state each backend keeps (`core.rs`). Nothing here knows a
//! particular VMM's API.

pub mod api;
pub mod api_socket;
pub mod binary;
pub mod core;
pub mod http;
pub mod launch;
pub mod nics;
pub mod spec;
pub mod tap;
#[cfg(test)]
pub(crate) mod test_dir;
#[cfg(test)]
pub(crate) mod test_support;

pub use binary::Vmm;
pub use spec::VmmSpec;
