//! The `capvault-collector` command.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(capvault_collector::run(capvault_collector::Cli::parse()))
}
