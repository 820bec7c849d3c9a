//! Per-event nDCG against references nobody here wrote: trec_eval (pytrec_eval) and scikit-learn.

use std::path::PathBuf;
use std::process::Command;

use crate::Stack;

pub fn reference_python() -> PathBuf {
    let cache = std::env::var_os("AION_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/aion"));
    let python = cache.join("venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup",
        python.display()
    );
    python
}

#[test]
fn ndcg_agrees_with_trec_eval_and_scikit_learn_for_every_event() {
    let s = Stack::offline();
    let dir = s.state.path();
    let d = dir.to_str().unwrap();
    // Degraded rankings, some unjudged events, judgment lists with unretrieved documents.
    s.run(&[
        "produce",
        "--to-dir",
        d,
        "--count",
        "6000",
        "--seed",
        "11",
        "--scenario",
        "degrade",
        "--degrade-at",
        "0.3",
    ]);
    let events = dir.join("retrieval.v1.jsonl");
    for (k, gain) in [
        ("10", "linear"),
        ("10", "exponential"),
        ("3", "linear"),
        ("3", "exponential"),
    ] {
        let scores = s.run(&["ndcg", events.to_str().unwrap(), "--k", k, "--gain", gain]);
        std::fs::write(dir.join(format!("{gain}-{k}.jsonl")), scores).unwrap();
    }
    for k in ["10", "3"] {
        let out = Command::new(reference_python())
            .arg(crate::repo_file("scripts/checks/ndcg_reference.py"))
            .arg(&events)
            .arg(dir.join(format!("linear-{k}.jsonl")))
            .arg(dir.join(format!("exponential-{k}.jsonl")))
            .arg(k)
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{report}");
        assert!(out.status.success(), "reference check failed:\n{report}");
        assert!(
            report.contains("'trec_eval': ") && !report.contains("'trec_eval': 0,"),
            "{report}"
        );
    }
}

#[test]
fn ndcg_reports_invalid_lines_and_fails() {
    let s = Stack::offline();
    let path = s.state.path().join("bad.jsonl");
    std::fs::write(&path, "{\"event_id\": 1}\n").unwrap();
    let out = s
        .aion()
        .args(["ndcg", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1: event_id: invalid type"),
        "{stderr}"
    );
}
