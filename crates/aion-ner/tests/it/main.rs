//! Parity with the model's reference runtime: candle's logits against onnxruntime on the original
//! quantised ONNX, on the converted weights `scripts/setup` produces; and entities on real text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use aion_ner::TokenClassifier;
use candle_core::Device;

fn cache() -> PathBuf {
    std::env::var_os("AION_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/aion"))
}

fn model() -> TokenClassifier {
    let dir = cache().join("models/rampart-1.4.0");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{}: run scripts/setup",
        dir.display()
    );
    TokenClassifier::load(&dir, &Device::Cpu).unwrap()
}

const TEXTS: [&str; 4] = [
    "My name is John Smith and my email is john.smith@example.com",
    "Call Maria Garcia at 555-123-4567 before Friday.",
    "Ship it to 42 Elm Street, Springfield, IL 62704",
    "The quarterly report is attached.",
];

#[test]
fn logits_match_onnxruntime_on_the_original_model() {
    let m = model();
    let ids: Vec<Vec<u32>> = TEXTS.iter().map(|t| m.encode(t).unwrap()).collect();
    let mut child = Command::new(cache().join("venv/bin/python"))
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/checks/ner_reference.py"),
        )
        .arg(cache().join("models/rampart-1.4.0"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the checks' venv (scripts/setup)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in &ids {
            writeln!(stdin, "{}", serde_json::to_string(i).unwrap()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let reference: Vec<Vec<Vec<f32>>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut worst = 0f32;
    for (i, ids) in ids.iter().enumerate() {
        let ours: Vec<Vec<f32>> = m.logits(ids).unwrap().to_vec2().unwrap();
        assert_eq!(ours.len(), reference[i].len());
        for (a, b) in ours.iter().flatten().zip(reference[i].iter().flatten()) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst < 1e-3, "max |Δlogit| = {worst}");
}

#[test]
fn finds_the_people_and_contacts_in_english_text() {
    let m = model();
    let e = m.entities(TEXTS[0]).unwrap();
    let found: Vec<(&str, &str)> = e
        .iter()
        .map(|e| (e.label.as_str(), e.text.as_str()))
        .collect();
    assert!(found.contains(&("GIVEN_NAME", "John")), "{found:?}");
    assert!(found.contains(&("SURNAME", "Smith")), "{found:?}");
    // The model tags every piece of an address B-EMAIL (its words split at punctuation), so the
    // simple strategy, like transformers', yields one entity per piece: together they cover it.
    let email = TEXTS[0].find("john.smith").unwrap();
    let pieces: Vec<_> = e.iter().filter(|e| e.label == "EMAIL").collect();
    assert_eq!(pieces.first().map(|e| e.start), Some(email), "{found:?}");
    assert_eq!(
        pieces.last().map(|e| e.end),
        Some(TEXTS[0].len()),
        "{found:?}"
    );
    assert!(m.entities(TEXTS[3]).unwrap().is_empty());
    // A long text: windows overlap, every name found, offsets point into the text.
    let long = format!(
        "{} Call Maria Garcia tomorrow.",
        "The quarterly report is attached. ".repeat(120)
    );
    let e = m.entities(&long).unwrap();
    assert!(e.iter().any(|e| e.text == "Maria"), "{e:?}");
    assert!(e.iter().all(|e| long[e.start..e.end] == e.text));
}

#[test]
fn odd_input_gives_sensible_output_in_bounded_work() {
    let m = model();
    for text in [
        "",
        "   \n\t  ",
        "🙂🙂🙂 👍",
        "Olá Мария 日本語テキスト مرحبا John",
        "\u{0}\u{1}",
    ] {
        let e = m.entities(text).unwrap();
        assert!(
            e.iter()
                .all(|e| text.get(e.start..e.end) == Some(e.text.as_str())),
            "{text:?}"
        );
    }
    // A 1 MB query: the enricher's sample is capped, so the model sees at most 7,000 characters.
    let event: aion_events::RetrievalEvent = serde_json::from_value(serde_json::json!({
        "event_id": "e", "tenant_id": "t", "ts": "2026-11-02T00:00:00Z",
        "query": "John Smith pediu reembolso. ".repeat(40_000), "results": []
    }))
    .unwrap();
    let sample = aion_ner::sample_text(&event);
    assert_eq!(sample.chars().count(), aion_ner::SAMPLE_CHARS);
    let started = std::time::Instant::now();
    let e = m.entities(&sample).unwrap();
    assert!(e.iter().filter(|e| e.text == "John").count() > 100);
    eprintln!("7,000 characters in {:?}", started.elapsed());
}
