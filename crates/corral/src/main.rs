//! `corral`: the one binary. `corral server` runs the control plane, `corral agent` runs on
//! each host, and every other verb is a client of the server's API.
//!
//! - `cli`: the command line (clap definitions only).
//! - `client`: the API client, which verifies the server against the pinned CA.
//! - `output`: tables for people, JSON for programs.
//! - `commands`: one function per verb (`stacks` and `images` hold the larger families).
//! - `bench`: scale harness with simulated agents (real protocol, real sockets).

mod audit;
mod backup;
mod bench;
mod bench_deploy;
mod cli;
mod client;
mod commands;
mod config;
mod context;
mod duration;
mod images;
mod netpolicy;
mod output;
mod stacks;
mod users;

/// Longest line read as a password.
const MAX_PASSWORD_LINE: u64 = 4096;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(cli: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        cli::Command::Server(_) | cli::Command::Agent(_) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
