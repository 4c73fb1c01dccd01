//! The wire format between nixos-test-ng and its guest agent, in one place.
//!
//! A connection carries frames `[u8 kind][u32 little-endian body length][body]`, the body at
//! most [`MAX_BODY`] bytes. On every new connection the agent sends [`Kind::Hello`] first; after
//! that the host sends one request at a time (EXEC, PUT, GET, PING) and reads the answer.
//! Control bodies are JSON ([`message`]); data bodies (STDOUT, STDERR, STDIN, DATA) are raw bytes.

mod decoder;
mod frame;
mod kind;
pub mod message;
mod path;

pub use decoder::FrameDecoder;
pub use frame::{
    encode_frame, encode_json, read_frame, write_frame, write_json, Frame, FrameError,
};
pub use kind::Kind;
pub use message::{Entry, EntryKind, Exec, Exit, Failure, Get, Hello, Pong, Put, Signal};
pub use path::{validate_relative_path, PathError};

/// The protocol's version, sent in [`Hello::protocol`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on by default.
pub const AGENT_PORT: u32 = 7001;

/// The largest body a frame may carry; a header announcing more is an error.
pub const MAX_BODY: usize = 1 << 20;

/// The size of a frame header: the kind byte and the little-endian u32 body length.
pub const HEADER_LEN: usize = 5;

/// The size data (STDOUT, STDERR, STDIN, DATA) is cut into, by convention.
pub const DATA_CHUNK: usize = 256 * 1024;

/// The agent's name, as sent in [`Hello::agent`].
pub const AGENT_NAME: &str = "nixos-test-ng-agent";
