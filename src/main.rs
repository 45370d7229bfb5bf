//! `portico`: one binary for Portico's controllers, webhook and tools.

mod cli;
mod dev;
mod install_report;
mod observe;
mod run;
mod signals;
mod version;
mod webhook_wiring;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cli::init_tracing(&cli.log);
    match cli.command.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
