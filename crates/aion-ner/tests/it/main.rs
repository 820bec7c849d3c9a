//! Parity with the model's reference runtime: candle's logits against onnxruntime on the original
//! quantised ONNX, on the converted weights `scripts/setup` produces; and entities on real text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::collections::HashSet;

use aion_ner::{group_simple, Entity, TokenClassifier, TokenPrediction};
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

/// onnxruntime's logits for each token-id sequence, from the checks' venv.
fn onnxruntime_logits(ids: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
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
        for i in ids {
            writeln!(stdin, "{}", serde_json::to_string(i).unwrap()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Parity with the original model on the 320 PT/EN texts of `data/texts.jsonl` (names, e-mails,
/// phones, cities, addresses, CPFs, text without entities): per-token labels and entities of
/// candle (batched, as the enricher runs) against onnxruntime on the quantised ONNX.
#[test]
fn labels_and_entities_match_onnxruntime_on_the_original_model() {
    let m = model();
    let texts = aion_ner::parity_texts();
    assert!(texts.len() >= 300);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = m.token_predictions(&refs, 16).unwrap();
    let ids: Vec<Vec<u32>> = refs.iter().map(|t| m.encode(t).unwrap()).collect();
    let reference = onnxruntime_logits(&ids);
    let (mut tokens, mut agree, mut worst) = (0usize, 0usize, 0f32);
    let (mut both, mut only_ours, mut only_reference) = (0usize, 0usize, 0usize);
    let mut differences = Vec::new();
    for (t, text) in refs.iter().enumerate() {
        // Every text fits one window: rows 1..=n are its tokens.
        assert_eq!(reference[t].len(), ours[t].len() + 2, "{text}");
        let theirs: Vec<TokenPrediction> = ours[t]
            .iter()
            .zip(&reference[t][1..])
            .map(|(o, logits)| {
                let (label, score) = aion_ner::argmax(&softmax(logits));
                TokenPrediction {
                    label: m.labels()[label].clone(),
                    score,
                    ..o.clone()
                }
            })
            .collect();
        for (a, b) in ours[t].iter().zip(&theirs) {
            tokens += 1;
            if a.label == b.label {
                agree += 1;
            } else {
                differences.push(format!(
                    "{:?}: {} vs {}",
                    &text[a.start..a.end],
                    a.label,
                    b.label
                ));
            }
        }
        let single: Vec<Vec<f32>> = m.logits(&ids[t]).unwrap().to_vec2().unwrap();
        for (a, b) in single.iter().flatten().zip(reference[t].iter().flatten()) {
            worst = worst.max((a - b).abs());
        }
        let key = |e: &Entity| (e.label.clone(), e.start, e.end);
        let a: HashSet<_> = group_simple(text, &ours[t]).iter().map(key).collect();
        let b: HashSet<_> = group_simple(text, &theirs).iter().map(key).collect();
        both += a.intersection(&b).count();
        only_ours += a.difference(&b).count();
        only_reference += b.difference(&a).count();
    }
    let agreement = agree as f64 / tokens as f64;
    let precision = both as f64 / (both + only_ours).max(1) as f64;
    let recall = both as f64 / (both + only_reference).max(1) as f64;
    let f1 = 2.0 * precision * recall / (precision + recall).max(f64::MIN_POSITIVE);
    eprintln!(
        "parity over {} texts: {tokens} tokens, label agreement {:.4}%, entities {both} shared / \
         {only_ours} only candle / {only_reference} only onnxruntime, entity F1 {f1:.4}, \
         max |Δlogit| {worst:.2e}; differing tokens: {differences:?}",
        refs.len(),
        agreement * 100.0
    );
    assert!(both > 500, "the texts are full of entities: {both}");
    assert!(agreement >= 0.995, "token agreement {agreement}");
    assert!(f1 >= 0.99, "entity F1 {f1}");
    assert!(worst < 1e-3, "max |Δlogit| = {worst}");
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

#[test]
fn batched_inference_equals_one_text_at_a_time() {
    let m = model();
    let texts = aion_ner::parity_texts();
    let refs: Vec<&str> = texts.iter().take(40).map(String::as_str).collect();
    let batched = m.entities_batch(&refs, 8).unwrap();
    for (text, batched) in refs.iter().zip(batched) {
        let single = m.entities(text).unwrap();
        assert_eq!(single.len(), batched.len(), "{text}");
        for (a, b) in single.iter().zip(&batched) {
            assert_eq!(
                (&a.label, a.start, a.end),
                (&b.label, b.start, b.end),
                "{text}"
            );
            assert!((a.score - b.score).abs() < 1e-4, "{text}");
        }
    }
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
