//! `aion`: one binary for every AION Stream stage, the local broker and the tools around them.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // First, before anything can take time: from here on SIGTERM/SIGINT is a request to stop, never
    // the default kill (a service manager may stop a stage while it is still starting).
    let stop = aion_cli::shutdown_signal();
    let aion_cli::Cli { globals, command } = aion_cli::Cli::parse();
    aion_cli::run(&globals, |ctx| aion_cli::commands::run(command, ctx, stop)).await
}
