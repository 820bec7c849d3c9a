//! End-to-end tests of the `aion` binary against a real Tansu broker started per test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod relay;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use aion_broker::Broker;
use aion_kafka::KafkaConfig;

pub struct Stack {
    pub broker: Broker,
    pub kafka: KafkaConfig,
    pub state: tempfile::TempDir,
}

impl Stack {
    pub fn start() -> Stack {
        let broker =
            Broker::start_temporary().expect("start broker (run scripts/setup to install it)");
        let kafka = KafkaConfig::new(broker.bootstrap());
        Stack {
            broker,
            kafka,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// `aion` with this stack's broker and state directory.
    pub fn aion(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_aion"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AION_BROKERS", self.broker.bootstrap())
            .env("AION_STATE_DIR", self.state.path())
            .env("AION_LOG", "warn");
        c
    }

    /// Runs `aion ARGS` to completion and returns stdout; panics with stderr on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.aion().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "aion {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn spawn(&self, args: &[&str], log: &Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        self.aion()
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

/// Sends SIGTERM and waits; returns whether the process exited successfully.
pub fn terminate(mut child: Child) -> bool {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    ok && child.wait().is_ok_and(|s| s.success())
}
