//! End-to-end tests of the `aion` binary against a real Kafka-protocol broker (Nisshi) started per test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod completions;
mod deploy;
mod enrich;
mod examples;
mod gate;
mod labels;
mod lifecycle;
mod logs;
mod ndcg;
mod pii;
mod relay;
mod schemas;
mod serve;
mod shards;
mod trainer;
mod up;
mod validate;
mod watermark;
mod windows;

use std::process::{Child, Command, Stdio};

use aion_broker::Broker;
use aion_events::ndcg::{ndcg, Gain};
use aion_events::{EnrichedRetrieval, RetrievalEvent, Term};
use aion_kafka::KafkaConfig;
use aion_shards::{EntityRow, RollPolicy, ShardWriter};

/// A file of this repository. Asked of cargo at run time, not baked in at compile time: a test
/// binary reused from a build of another checkout must still read this one's files.
pub fn repo_file(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .join("../..")
        .join(rel)
}

/// Fails the test with the command's standard error unless it succeeded.
#[track_caller]
pub fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How the stages under test get their partitions: `all` (direct assignment, as `aion up` runs
/// them) unless `AION_TEST_ASSIGNMENT=group` (consumer-group membership, the production default);
/// scripts/test runs the suite in both.
pub fn assignment() -> String {
    std::env::var("AION_TEST_ASSIGNMENT").unwrap_or_else(|_| "all".into())
}

pub struct Stack {
    /// `None` for commands that need no broker.
    pub broker: Option<Broker>,
    pub kafka: KafkaConfig,
    pub state: tempfile::TempDir,
}

impl Stack {
    pub fn start() -> Stack {
        let broker =
            Broker::start_temporary().expect("start broker (run scripts/setup to install it)");
        let kafka = KafkaConfig::new(broker.bootstrap());
        Stack {
            broker: Some(broker),
            kafka,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// Publishes `(topic, key, payload)` records and waits until the broker holds every one.
    pub async fn publish(&self, records: impl IntoIterator<Item = (String, String, Vec<u8>)>) {
        let sink = aion_kafka::Sink::new(&self.kafka, "test").unwrap();
        for (topic, key, payload) in records {
            sink.send(&topic, Some(key.as_bytes()), &payload, None, None)
                .await
                .unwrap();
        }
        sink.flush(std::time::Duration::from_secs(60)).unwrap();
    }

    /// Rows committed to a table under the state directory (its manifest: what is durable).
    pub fn table_rows(&self, table: &str) -> usize {
        aion_shards::read_manifest(&self.state.path().join(table))
            .map_or(0, |m| m.iter().map(|e| e.rows).sum())
    }

    /// A stack without a broker, for offline commands.
    pub fn offline() -> Stack {
        Stack {
            broker: None,
            kafka: KafkaConfig::new("127.0.0.1:1"),
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// `aion` with this stack's broker and state directory.
    pub fn aion(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_aion"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // Where scripts/setup put the offline model.
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .envs(std::env::var_os("AION_CACHE_DIR").map(|d| ("AION_CACHE_DIR", d)))
            .env("AION_BROKERS", &self.kafka.brokers)
            .env("AION_STATE_DIR", self.state.path())
            .env("AION_KAFKA_ASSIGNMENT", assignment())
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

    /// Starts `aion ARGS` in the background, logging to `<state>/<log>`; killed when dropped.
    pub fn spawn(&self, args: &[&str], log: &str) -> Running {
        self.spawn_with(args, log, &[])
    }

    /// [`Stack::spawn`] with extra environment variables.
    pub fn spawn_with(&self, args: &[&str], log: &str, env: &[(&str, &str)]) -> Running {
        let log = self.state.path().join(log);
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .aion()
            .env("AION_LOG", "info")
            .envs(env.iter().copied())
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Running::new(child, Some(log))
    }

    /// The last lines of every background command's log (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.state.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out += &format!(
                    "--- {}\n{}\n",
                    entry.path().display(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
        }
        out
    }
}

/// A background `aion` process; SIGKILLed if still running when dropped (e.g. a failed test).
pub struct Running {
    child: Option<Child>,
    /// Where its stderr goes, for [`Running::wait_for_line`].
    log: Option<std::path::PathBuf>,
}

/// The line a stage logs once it consumes (`aion_kafka::Source`): from then on a stop drains.
pub const READY_LINE: &str = "stage ready: consuming";

impl Running {
    pub fn new(child: Child, log: Option<std::path::PathBuf>) -> Running {
        Running {
            child: Some(child),
            log,
        }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running process").id()
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Waits until the process logs `line` (true) or exits first (false); panics after 5 minutes,
    /// far beyond any start-up here, so a slow machine only makes a test slower.
    pub fn wait_for_line(&mut self, line: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let log = self.log.as_ref().expect("a process started with a log");
            if std::fs::read_to_string(log).is_ok_and(|t| t.contains(line)) {
                return true;
            }
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => {}
                _ => return false,
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `{line}` in {}",
                log.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits for [`READY_LINE`]; false if the process exited before it.
    pub fn wait_ready(&mut self) -> bool {
        self.wait_for_line(READY_LINE)
    }

    /// Sends SIGTERM now, whatever the process is doing, and waits; returns whether it exited
    /// successfully.
    pub fn signal_term(mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        sent && child.wait().is_ok_and(|s| s.success())
    }

    /// Waits until the stage is ready, then stops it as an operator would (SIGTERM) and waits;
    /// returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        self.wait_ready();
        self.signal_term()
    }

    /// Waits for the process to exit; returns whether it succeeded. Panics after 5 minutes (a
    /// process that was expected to end and did not).
    pub fn wait(mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("process {} did not exit within 5 minutes", child.id());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `entities` table as the shard stage writes it, for the retrieval events of a JSONL file:
/// each with its nDCG@10 and one row per traffic-vocabulary entity its query names (a stand-in for
/// the enricher, whose offline model finds names and places but not products).
pub fn write_entity_table(root: &std::path::Path, retrievals_jsonl: &str) {
    let vocabulary: Vec<&str> = aion_traffic::entities().collect();
    let mut w: ShardWriter<EntityRow, ()> =
        ShardWriter::open(&root.join("entities"), RollPolicy::default(), None).unwrap();
    for (i, line) in retrievals_jsonl.lines().enumerate() {
        let Ok(e) = serde_json::from_str::<RetrievalEvent>(line) else {
            continue;
        };
        let entities: Vec<Term> = vocabulary
            .iter()
            .filter(|v| e.query.contains(**v))
            .map(|v| Term {
                text: v.to_lowercase(),
                kind: "ENTITY".into(),
                score: 3,
                source: "ner".into(),
            })
            .collect();
        if entities.is_empty() {
            continue;
        }
        let ndcg = ndcg(&e.results, e.judgments.as_deref(), 10, Gain::Linear);
        let event = EnrichedRetrieval {
            event_id: e.event_id,
            tenant_id: e.tenant_id,
            ts: e.ts,
            query: e.query,
            entities,
            mentions: Vec::new(),
            results: Vec::new(),
            judgments: None,
        };
        assert!(w.push(0, i as i64, EntityRow { event, ndcg }, ()));
    }
    w.roll(
        std::time::Instant::now() + std::time::Duration::from_secs(3600),
        true,
    )
    .unwrap();
}
