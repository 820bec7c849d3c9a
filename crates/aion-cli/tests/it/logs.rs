//! Logs for collectors: `--log-format json` writes one JSON object per line, the exit reason
//! included, and `RUST_LOG` is the filter when `AION_LOG` is not set.

use crate::Stack;

#[test]
fn json_logs_are_one_object_per_line_and_rust_log_is_honoured() {
    let s = Stack::offline();
    // No broker answers: the stage logs its start, then exits with an error.
    let out = s
        .aion()
        .env_remove("AION_LOG")
        .env("RUST_LOG", "warn")
        .args(["--log-format", "json", "gate", "run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let level = |l: &serde_json::Value| l["level"].as_str().unwrap().to_owned();
    // Without RUST_LOG the filter is `info` and "stage starting" is logged.
    assert!(
        lines
            .iter()
            .all(|l| matches!(level(l).as_str(), "WARN" | "ERROR")),
        "{stderr}"
    );
    let last = lines.last().unwrap();
    assert_eq!(level(last), "ERROR", "{stderr}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{stderr}"
    );
}
