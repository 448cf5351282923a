//! The `aside` server: the typed core (`core`: every operation, the batcher, the
//! re-embedding workflow), two thin transports over it (`http`, `grpc`), the layer
//! both share (`guard`: keys, limits, timeout, metrics), and the command line
//! (`cli`). A library so tests can build the core and router without a process.

pub mod cli;
pub mod core;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod metrics;
