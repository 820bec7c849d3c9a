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
    for key in [
        "raw_ratio",
        "raw_ratio_f32",
        "raw_ratio_int8",
        "realistic_ratio",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert!(report["entity_f1"].as_f64().unwrap() >= 0.99, "{report}");
    assert!(
        report["int8_entity_f1"].as_f64().unwrap() >= 0.99,
        "{report}"
    );
    assert!(
        report["token_agreement"].as_f64().unwrap() >= 0.995,
        "{report}"
    );
    // aion f32 and int8; onnxruntime shipped in batches of 8 and unbatched, and its int8; on
    // both sets. The ratios are taken against the faster of the shipped model's two batchings.
    assert_eq!(report["model"].as_array().unwrap().len(), 10, "{report}");
    let reference = report["raw_ratio_reference"].as_str().unwrap();
    assert!(reference.starts_with("onnxruntime shipped"), "{report}");
    // The enricher's phases over 12 events (2, 4 and 6 of them), then the Python pipeline.
    assert_eq!(report["events"].as_array().unwrap().len(), 4, "{report}");
}

/// `aion-bench train` on a tiny budget: both aion storages train and land in the table (the
/// PEFT reference too when its venv exists), so the GPU benchmark's code path cannot rot.
#[test]
fn the_training_benchmark_trains_both_storages_on_a_tiny_budget() {
    let out = Command::new(env!("CARGO_BIN_EXE_aion-bench"))
        .args(["--log", "warn", "train", "--steps", "2", "--seq-len", "64"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    for weights in ["NF4, double-quant scales", "f32"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| aion (candle) | {weights} |")))
            .unwrap_or_else(|| panic!("no aion {weights} row in\n{stdout}"));
        // Tokens/s is a number and the last loss is finite: the run trained.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cells[3].parse::<f64>().unwrap() > 0.0, "{row}");
        assert!(cells[9].parse::<f64>().unwrap().is_finite(), "{row}");
    }
    assert!(
        stdout.contains("| PEFT |") || stdout.contains("| PEFT ("),
        "{stdout}"
    );
}

/// A device the build or machine cannot open fails before anything is loaded, naming it.
#[test]
fn the_training_benchmark_refuses_a_device_it_cannot_open() {
    let out = Command::new(env!("CARGO_BIN_EXE_aion-bench"))
        .args([
            "--log", "warn", "train", "--device", "cuda:7", "--steps", "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("training device cuda:7"), "{stderr}");
}
