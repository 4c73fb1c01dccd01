//! Transports: how commands reach a guest. A [`connector::Connector`] yields a byte stream
//! ([`stream::ByteStream`]); the backdoor protocol ([`shell`], [`interact`]) or the guest
//! agent's ([`agent`], with host trees in [`tree`]) runs over it.

pub mod agent;
pub mod connector;
pub mod interact;
pub mod shell;
pub mod stream;
pub mod tree;
