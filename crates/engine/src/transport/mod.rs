//! Transports: how commands reach a guest. A [`connector::Connector`] yields a byte stream
//! ([`stream::ByteStream`]); the backdoor protocol ([`shell`], [`interact`]) runs over it.

pub mod connector;
pub mod interact;
pub mod shell;
pub mod stream;
