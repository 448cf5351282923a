//! The `aside` server: the command line (`cli`) and the HTTP application (`app`).
//! A library so tests can build the router and state without a process.

pub mod app;
pub mod cli;
pub mod grpc;
