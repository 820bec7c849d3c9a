use anyhow::{Context as _, Result};
use clap::Subcommand;

use crate::Context;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Start the broker in the background (no-op if it already runs). Storage: `<state dir>/broker`.
    Start {
        /// Loopback port to listen on.
        #[arg(long, default_value_t = 9092, env = "AION_BROKER_PORT")]
        port: u16,
    },
    /// Stop the background broker (SIGTERM, SIGKILL after 10 s).
    Stop,
    /// Tell whether the background broker runs.
    Status,
}

pub fn run(action: Action, ctx: &Context) -> Result<()> {
    let dir = ctx.broker_dir();
    match action {
        Action::Start { port } => {
            let port = aion_broker::start_background(port, &dir).context("starting the broker")?;
            println!(
                "broker running on 127.0.0.1:{port} (data: {})",
                dir.display()
            );
        }
        Action::Stop => {
            aion_broker::stop_background(&dir)?;
            println!("broker stopped");
        }
        Action::Status => match aion_broker::status(&dir)? {
            aion_broker::Status::Running { pid, port } => {
                println!("running: pid {pid}, 127.0.0.1:{port}")
            }
            aion_broker::Status::Stale { pid } => {
                println!("not running (stale pid file for pid {pid})")
            }
            aion_broker::Status::Stopped => println!("not running"),
        },
    }
    Ok(())
}
