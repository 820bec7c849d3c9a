//! The JSON Schemas (`schemas/`, what producers validate against) and the Rust decoder (what the
//! stages accept) judge the same generated documents: where one accepts and the other refuses, the
//! difference must be one of the few rules a JSON Schema cannot state.

use aion_events::{decode, AnswerEvent, DecodeLimits, RetrievalEvent, Schema};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use crate::fuzz::mutate_tree;
use crate::{examples, schema_dir};

/// Values that probe the limits both sides state: lengths around 128 in ASCII and in multibyte
/// characters, control characters, timestamps, numbers at the edges.
fn probe(rng: &mut StdRng) -> Value {
    match rng.random_range(0..22) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-2i64..6)),
        3 => json!(rng.random::<f64>() * 2.0 - 0.5),
        4 => json!(""),
        5 => json!(" "),
        6 => json!(".."),
        7 => json!("a/b"),
        8 => json!("x".repeat(128)),
        9 => json!("x".repeat(129)),
        10 => json!("é".repeat(64)),
        11 => json!("é".repeat(65)),
        12 => json!("é".repeat(128)),
        13 => json!(["tab\there", "next\u{85}line"][rng.random_range(0..2)]),
        14 => json!("2026-11-24T13:05:00Z"),
        15 => json!("2026-11-24 13:05:00"),
        16 => json!("2026-13-24T13:05:00Z"),
        17 => json!(4294967295u64),
        18 => json!(4294967296u64),
        19 => json!(1.5),
        20 => json!([]),
        _ => json!({}),
    }
}

/// A generated document and the decoder's verdict on it.
type Judged = (Value, Result<(), String>);

/// How many generated documents the decoder accepted, and those both sides judged differently.
fn disagreements<T: Schema>(seed: u64, cases: usize) -> (usize, Vec<Judged>) {
    let path = schema_dir().join(format!("{}.schema.json", T::NAME));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // answer.v1 refers to retrieval.v1's definitions by its `$id`.
    let retrieval: Value = serde_json::from_str(
        &std::fs::read_to_string(schema_dir().join("retrieval.v1.schema.json")).unwrap(),
    )
    .unwrap();
    let registry = jsonschema::Registry::new()
        .add(retrieval["$id"].as_str().unwrap(), retrieval.clone())
        .unwrap()
        .prepare()
        .unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .with_registry(&registry)
        .build(&schema)
        .unwrap();
    let seeds = examples(T::NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut accepted, mut found) = (0, Vec::new());
    for _ in 0..cases {
        let mut doc = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..3) {
            mutate_tree(&mut doc, &mut rng, probe);
        }
        let bytes = serde_json::to_vec(&doc).unwrap();
        let ours = decode::<T>(&bytes, &DecodeLimits::default())
            .map(|_| ())
            .map_err(|r| r.to_string());
        accepted += usize::from(ours.is_ok());
        if ours.is_ok() != validator.is_valid(&doc) {
            found.push((doc, ours));
        }
    }
    (accepted, found)
}

/// What the decoder refuses beyond its schema: uniqueness of ranks and doc ids within a list
/// (`uniqueItems` compares whole items, not one property of them).
const BEYOND_THE_SCHEMA: &[&str] = &["repeats", "duplicate"];

fn check<T: Schema>(seed: u64) {
    let (accepted, found) = disagreements::<T>(seed, 20_000);
    assert!(
        accepted > 1_000,
        "{}: the generator rarely makes a valid document",
        T::NAME
    );
    let unexplained: Vec<_> = found
        .iter()
        .filter(|(_, ours)| match ours {
            Err(reason) => !BEYOND_THE_SCHEMA.iter().any(|r| reason.contains(r)),
            Ok(()) => true,
        })
        .take(5)
        .collect();
    assert!(
        unexplained.is_empty(),
        "{}: the schema and the decoder disagree on:\n{}",
        T::NAME,
        unexplained
            .iter()
            .map(|(doc, ours)| format!("decoder {ours:?} on {doc}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_retrieval_schema_and_the_decoder_agree() {
    check::<RetrievalEvent>(0xD1FF);
}

#[test]
fn the_answer_schema_and_the_decoder_agree() {
    check::<AnswerEvent>(0xD1FF + 1);
}
