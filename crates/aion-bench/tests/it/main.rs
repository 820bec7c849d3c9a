//! The benchmarks run end to end on tiny budgets, so none can rot unnoticed. Speeds are printed,
//! never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Command;

/// `aion-bench ner --json`: both runtimes on the same model inputs, the ratios reported, and
/// aion's entities equal to the shipped model's under onnxruntime.
#[test]
fn the_ner_benchmark_reports_its_ratios_and_exact_entities() {
    let out = Command::new(env!("CARGO_BIN_EXE_aion-bench"))
        .args(["--log", "warn", "ner", "--repeats", "1", "--events", "2"])
        .args(["--traffic-events", "12", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{report:#}");
    for key in ["raw_ratio", "realistic_ratio"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert!(report["entity_f1"].as_f64().unwrap() >= 0.99, "{report}");
    assert!(
        report["token_agreement"].as_f64().unwrap() >= 0.995,
        "{report}"
    );
    // aion, onnxruntime shipped and onnxruntime int8, on both sets.
    assert_eq!(report["model"].as_array().unwrap().len(), 6, "{report}");
    assert_eq!(report["events"].as_array().unwrap().len(), 3, "{report}");
}
