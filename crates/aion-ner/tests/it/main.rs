//! Parity with the model's reference runtime: candle's logits against onnxruntime on the original
//! quantised ONNX, on the converted weights `scripts/setup` produces; and entities on real text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::collections::HashSet;

use aion_ner::{Aggregation, Entity, Precision, TokenClassifier};
use candle_core::Device;

fn cache() -> PathBuf {
    std::env::var_os("AION_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/aion"))
}

fn model_dir() -> PathBuf {
    let dir = cache().join("models/rampart-1.4.0");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{}: run scripts/setup",
        dir.display()
    );
    dir
}

/// The model in f32, the shipped model's arithmetic.
fn model() -> TokenClassifier {
    TokenClassifier::load(&model_dir(), &Device::Cpu, Precision::F32).unwrap()
}

const TEXTS: [&str; 4] = [
    "My name is John Smith and my email is john.smith@example.com",
    "Call Maria Garcia at 555-123-4567 before Friday.",
    "Ship it to 42 Elm Street, Springfield, IL 62704",
    "The quarterly report is attached.",
];

/// Runs a reference script of `scripts/checks` in the checks' venv: one JSON line in per input,
/// one JSON line out.
fn reference<I: serde::Serialize, O: serde::de::DeserializeOwned>(
    script: &str,
    inputs: &[I],
) -> Vec<O> {
    let mut child = Command::new(cache().join("venv/bin/python"))
        .arg(
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
                .join("../../scripts/checks")
                .join(script),
        )
        .arg(cache().join("models/rampart-1.4.0"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the checks' venv (scripts/setup)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in inputs {
            writeln!(stdin, "{}", serde_json::to_string(i).unwrap()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A labelled text: gold entities as (type, start, end) byte spans.
#[derive(serde::Deserialize)]
struct Labelled {
    text: String,
    entities: Vec<(String, usize, usize)>,
}

fn labelled() -> Vec<Labelled> {
    include_str!("../../data/labelled.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

type Span = (String, usize, usize);

/// (shared, only ours, only theirs, F1) of two lists of entity sets.
fn f1(ours: &[HashSet<Span>], theirs: &[HashSet<Span>]) -> (usize, usize, usize, f64) {
    let (mut both, mut only_ours, mut only_theirs) = (0, 0, 0);
    for (a, b) in ours.iter().zip(theirs) {
        both += a.intersection(b).count();
        only_ours += a.difference(b).count();
        only_theirs += b.difference(a).count();
    }
    let precision = both as f64 / (both + only_ours).max(1) as f64;
    let recall = both as f64 / (both + only_theirs).max(1) as f64;
    let f1 = 2.0 * precision * recall / (precision + recall).max(f64::MIN_POSITIVE);
    (both, only_ours, only_theirs, f1)
}

fn spans(entities: &[Entity]) -> HashSet<Span> {
    entities
        .iter()
        .map(|e| (e.label.clone(), e.start, e.end))
        .collect()
}

/// Entity F1 of `m` (with its aggregation) against the reference's entities of the same strategy.
fn f1_against(
    m: &TokenClassifier,
    texts: &[&str],
    expected: &[std::collections::HashMap<String, Vec<Span>>],
) -> (usize, usize, usize, f64) {
    let ours: Vec<HashSet<Span>> = m
        .entities_batch(texts, 16)
        .unwrap()
        .iter()
        .map(|e| spans(e))
        .collect();
    let theirs: Vec<HashSet<Span>> = expected
        .iter()
        .map(|e| e[m.aggregation().name()].iter().cloned().collect())
        .collect();
    f1(&ours, &theirs)
}

/// Token-level parity with the original model on the 320 PT/EN texts of `data/texts.jsonl`:
/// candle's labels (batched, as the enricher runs) and logits against onnxruntime on the
/// quantised ONNX.
#[test]
fn token_labels_match_onnxruntime_on_the_original_model() {
    let m = model();
    let texts = aion_ner::parity_texts();
    assert!(texts.len() >= 300);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = m.token_predictions(&refs, 16).unwrap();
    let ids: Vec<Vec<u32>> = refs.iter().map(|t| m.encode(t).unwrap()).collect();
    let reference: Vec<Vec<Vec<f32>>> = reference("ner_reference.py", &ids);
    let (mut tokens, mut agree, mut worst) = (0usize, 0usize, 0f32);
    for (t, text) in refs.iter().enumerate() {
        // Every text fits one window: rows 1..=n are its tokens.
        assert_eq!(reference[t].len(), ours[t].len() + 2, "{text}");
        for (a, logits) in ours[t].iter().zip(&reference[t][1..]) {
            tokens += 1;
            agree += usize::from(aion_ner::argmax(&a.probs).0 == aion_ner::argmax(logits).0);
        }
        let single: Vec<Vec<f32>> = m.logits(&ids[t]).unwrap().to_vec2().unwrap();
        for (a, b) in single.iter().flatten().zip(reference[t].iter().flatten()) {
            worst = worst.max((a - b).abs());
        }
    }
    let agreement = agree as f64 / tokens as f64;
    eprintln!("token parity over {} texts: {tokens} tokens, label agreement {:.4}%, max |Δlogit| {worst:.2e}", refs.len(), agreement * 100.0);
    assert!(agreement >= 0.995, "token agreement {agreement}");
    assert!(worst < 1e-3, "max |Δlogit| = {worst}");
}

/// Entities, the level a user sees: the enricher's word-level aggregation against an outside
/// reference (`scripts/checks/ner_entities_reference.py`: transformers' aggregation written from
/// its documentation, on onnxruntime's output) on 640 texts — PT/EN names with compound
/// surnames, e-mails, phones, CPF and CNPJ with punctuation — for every strategy.
#[test]
fn entities_match_the_reference_aggregation_over_onnxruntime() {
    let mut texts = aion_ner::parity_texts();
    texts.extend(labelled().into_iter().map(|l| l.text));
    assert!(texts.len() >= 600);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected: Vec<std::collections::HashMap<String, Vec<Span>>> =
        reference("ner_entities_reference.py", &refs);
    for strategy in Aggregation::ALL {
        let m = model().with_aggregation(strategy);
        let (both, only_ours, only_theirs, f1) = f1_against(&m, &refs, &expected);
        eprintln!("{}: {both} entities shared, {only_ours} only candle, {only_theirs} only the reference, F1 {f1:.4}", strategy.name());
        assert!(both > 1000, "the texts are full of entities: {both}");
        assert!(f1 >= 0.99, "{}: entity F1 {f1}", strategy.name());
    }
}

/// Int8, the enricher's default where the CPU has an int8 kernel: its entities against the
/// shipped model's (the reference aggregation over onnxruntime) on the same 640 texts, and its
/// token labels against f32's, which equal onnxruntime's (test above).
#[test]
fn int8_entities_stay_within_one_percent_of_the_shipped_model() {
    let mut texts = aion_ner::parity_texts();
    texts.extend(labelled().into_iter().map(|l| l.text));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected: Vec<std::collections::HashMap<String, Vec<Span>>> =
        reference("ner_entities_reference.py", &refs);
    let int8 = TokenClassifier::load(&model_dir(), &Device::Cpu, Precision::Int8).unwrap();
    let (both, only_ours, only_theirs, f1) = f1_against(&int8, &refs, &expected);
    let f32_labels = model().token_predictions(&refs, 16).unwrap();
    let int8_labels = int8.token_predictions(&refs, 16).unwrap();
    let (mut tokens, mut agree) = (0usize, 0usize);
    for (a, b) in f32_labels
        .iter()
        .flatten()
        .zip(int8_labels.iter().flatten())
    {
        tokens += 1;
        agree += usize::from(aion_ner::argmax(&a.probs).0 == aion_ner::argmax(&b.probs).0);
    }
    let agreement = agree as f64 / tokens as f64;
    eprintln!("int8 ({} kernel): {both} entities shared, {only_ours} only int8, {only_theirs} only the reference, F1 {f1:.4}; token agreement with f32 {:.4}%", aion_simd::int8::Kernel::detect().name(), agreement * 100.0);
    assert!(both > 1000, "the texts are full of entities: {both}");
    assert!(f1 >= 0.99, "int8 entity F1 {f1}");
    assert!(agreement >= 0.995, "int8 token agreement {agreement}");
    assert!(
        agreement < 1.0,
        "int8 computed exactly what f32 did: is it running?"
    );
}

/// The default aggregation is the one with the best entity F1 against the gold words of the
/// labelled set (names and cities); the table is printed for the README.
#[test]
fn the_default_aggregation_has_the_best_f1_on_the_labelled_set() {
    let set = labelled();
    let refs: Vec<&str> = set.iter().map(|l| l.text.as_str()).collect();
    let gold: Vec<HashSet<Span>> = set
        .iter()
        .map(|l| l.entities.iter().cloned().collect())
        .collect();
    let kinds: HashSet<&str> = ["GIVEN_NAME", "SURNAME", "CITY"].into();
    let mut scores = Vec::new();
    for strategy in Aggregation::ALL {
        let found = model()
            .with_aggregation(strategy)
            .entities_batch(&refs, 16)
            .unwrap();
        let ours: Vec<HashSet<Span>> = found
            .iter()
            .map(|e| {
                spans(e)
                    .into_iter()
                    .filter(|s| kinds.contains(s.0.as_str()))
                    .collect()
            })
            .collect();
        let (both, only_ours, only_gold, f1) = f1(&ours, &gold);
        eprintln!(
            "| {} | {both} | {only_ours} | {only_gold} | {f1:.4} |",
            strategy.name()
        );
        scores.push((strategy, f1));
    }
    let best = scores.iter().map(|s| s.1).fold(0.0, f64::max);
    let default = scores
        .iter()
        .find(|s| s.0 == Aggregation::default())
        .unwrap()
        .1;
    assert!(
        default >= best - 1e-9,
        "default {default} < best {best}: {scores:?}"
    );
    assert!(
        default > 0.8,
        "the model finds most planted names: {default}"
    );
}

/// Redaction favours recall: the share of the labelled set's name words (given names and
/// surnames) covered by what the shard stage redacts, against the share the labels alone cover.
#[test]
fn redaction_covers_more_name_words_than_the_labels() {
    let set = labelled();
    let refs: Vec<&str> = set.iter().map(|l| l.text.as_str()).collect();
    let m = model();
    let covered = |found: &[Vec<Entity>], identifying: &dyn Fn(&str) -> bool| {
        let (mut hit, mut all) = (0usize, 0usize);
        for (l, found) in set.iter().zip(found) {
            for (kind, start, end) in &l.entities {
                if kind == "CITY" {
                    continue;
                }
                // Each word of the name, particles included.
                let mut at = *start;
                for word in l.text[*start..*end].split(' ') {
                    let (ws, we) = (at, at + word.len());
                    at = we + 1;
                    all += 1;
                    hit += usize::from(
                        found
                            .iter()
                            .any(|e| identifying(&e.label) && e.start <= ws && we <= e.end),
                    );
                }
            }
        }
        hit as f64 / all as f64
    };
    let person = |l: &str| matches!(l, "GIVEN_NAME" | "SURNAME" | "PERSON");
    let labels = covered(&m.entities_batch(&refs, 16).unwrap(), &person);
    // A fresh finder remembers no name yet: this measures the model, not repetition.
    let finder = aion_ner::NameFinder::new(model());
    let redacted = covered(&finder.find(&refs, 16).unwrap(), &person);
    eprintln!("name words covered: labels {labels:.4}, redaction {redacted:.4}");
    assert!(redacted > labels, "{redacted} <= {labels}");
    assert!(redacted >= 0.97, "{redacted}");
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
    // The tokenizer splits an address into words at its punctuation and the model tags each
    // B-EMAIL, so, as in transformers, each word is an entity: together they cover the address.
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

/// Events whose passages repeat (a few popular ones, as retrieval traffic does): enriched with the
/// segment cache, in batches of different makeup, they equal the uncached run — the same terms
/// and mentions in the same order, scores equal up to float noise — while most segments skip the
/// model.
#[test]
fn the_segment_cache_changes_no_result_and_skips_repeated_passages() {
    let m = model();
    let passages = [
        "Maria Silva ships the order to Recife within 3 business days.",
        "John Smith handles refunds for customers in Curitiba.",
        "Discover the new plan: special offers for new customers this month.",
        "A entrega para Belém leva 5 dias úteis, segundo Ana Souza.",
    ];
    let events: Vec<aion_events::RetrievalEvent> = (0..24)
        .map(|i| {
            let results: Vec<serde_json::Value> = (0..3)
                .map(|r| {
                    serde_json::json!({"doc_id": format!("d{r}"), "rank": r + 1, "score": 1.0,
                        "text": passages[(i * 7 + r * 3) % passages.len()]})
                })
                .collect();
            serde_json::from_value(serde_json::json!({
                "event_id": format!("e{i}"), "tenant_id": "t", "ts": "2026-11-02T00:00:00Z",
                "query": format!("Where is the order of Carlos Pereira number {i}?"),
                "results": results
            }))
            .unwrap()
        })
        .collect();
    let payloads: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect();
    let inputs: Vec<(&aion_events::RetrievalEvent, &[u8])> = events
        .iter()
        .zip(&payloads)
        .map(|(e, p)| (e, p.as_slice()))
        .collect();

    let mut off = aion_ner::SegmentCache::new(0);
    let uncached: Vec<Vec<u8>> = inputs
        .chunks(8)
        .flat_map(|batch| aion_ner::enrich(&m, &mut off, batch, 8).unwrap())
        .collect();
    let mut on = aion_ner::SegmentCache::new(1000);
    let cached: Vec<Vec<u8>> = inputs
        .chunks(5)
        .flat_map(|batch| aion_ner::enrich(&m, &mut on, batch, 8).unwrap())
        .collect();

    let shape = |bytes: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let strip = |list: &serde_json::Value, score: &str| -> Vec<(serde_json::Value, f64)> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    let mut x = x.clone();
                    let s = x[score].as_f64().unwrap_or(0.0);
                    x.as_object_mut().unwrap().remove(score);
                    (x, s)
                })
                .collect()
        };
        (
            strip(&v["entities"], "score"),
            strip(&v["mentions"], "score"),
        )
    };
    for ((a, b), event) in uncached.iter().zip(&cached).zip(&events) {
        let (a, b) = (shape(a), shape(b));
        for (x, y) in [(&a.0, &b.0), (&a.1, &b.1)] {
            assert_eq!(x.len(), y.len(), "{a:?}\n{b:?}");
            for ((xv, xs), (yv, ys)) in x.iter().zip(y) {
                assert_eq!(xv, yv);
                assert!((xs - ys).abs() < 1e-3, "{xs} vs {ys}");
            }
        }
        // Entities of the query and of a passage (found at its place in the sample) form terms.
        let person = |name: &str| {
            a.0.iter()
                .any(|(t, _)| t["text"] == name && t["type"] == "PERSON")
        };
        assert!(person("carlos pereira"), "{a:?}");
        if event.results.iter().any(|r| r.text.contains("Ana Souza")) {
            assert!(person("ana souza"), "{a:?}");
        }
    }
    // 24 distinct queries and 4 distinct passages through the model; the other 68 of 96 segments
    // answered without it.
    assert_eq!((on.misses, on.hits), (28, 68));
    assert_eq!(off.misses + off.hits, 96);
}
