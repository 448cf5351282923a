//! The `aside` binary: one command line for embedding, serving, training and
//! evaluating adapters on one frozen backbone.

use aside_server::cli;
use clap::Parser;

// Tensors are large and short-lived: the system allocator maps and unmaps them on
// every op (page faults dominated profiles); mimalloc keeps and reuses its pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
