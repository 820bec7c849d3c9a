//! Property test of the decoder: 100k generated inputs — valid examples mutated at the byte level
//! and at the JSON level — must each decode or be rejected, never panic, and anything accepted must
//! re-validate after a round trip.

use aion_events::{decode, AnswerEvent, DecodeLimits, RetrievalEvent, Schema};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use crate::examples;

const CASES: usize = 100_000;

fn random_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..9) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-5i64..10)),
        3 => json!(rng.random::<f64>() * 2.0 - 0.5),
        4 => json!(""),
        5 => json!(".."),
        6 => json!("a/b"),
        7 => json!([]),
        _ => json!({}),
    }
}

/// Replaces a random node of the JSON tree by a `leaf` value, deletes it or duplicates an array
/// item.
pub fn mutate_tree(v: &mut Value, rng: &mut StdRng, leaf: fn(&mut StdRng) -> Value) {
    match v {
        Value::Object(map) if !map.is_empty() && rng.random_bool(0.8) => {
            let key = map
                .keys()
                .nth(rng.random_range(0..map.len()))
                .cloned()
                .unwrap();
            match rng.random_range(0..4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(key, leaf(rng));
                }
                _ => mutate_tree(map.get_mut(&key).unwrap(), rng, leaf),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.random_bool(0.8) => {
            let i = rng.random_range(0..items.len());
            if rng.random_bool(0.2) {
                let copy = items[i].clone();
                items.push(copy);
            } else {
                mutate_tree(&mut items[i], rng, leaf);
            }
        }
        other => *other = leaf(rng),
    }
}

fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut StdRng) {
    for _ in 0..rng.random_range(1..4) {
        if bytes.is_empty() {
            return;
        }
        let i = rng.random_range(0..bytes.len());
        match rng.random_range(0..4) {
            0 => bytes[i] = rng.random(),
            1 => bytes.truncate(i),
            2 => {
                const JSON_BYTES: &[u8] = b"{}[],:\"\\0e-";
                bytes.insert(i, JSON_BYTES[rng.random_range(0..JSON_BYTES.len())]);
            }
            _ => {
                bytes.remove(i);
            }
        }
    }
}

fn run<T: Schema>(rng: &mut StdRng, cases: usize) -> (usize, usize) {
    let seeds: Vec<Value> = examples(T::NAME);
    let limits = DecodeLimits::default();
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..cases {
        let mut v = seeds[rng.random_range(0..seeds.len())].clone();
        let bytes = if rng.random_bool(0.5) {
            for _ in 0..rng.random_range(1..3) {
                mutate_tree(&mut v, rng, random_value);
            }
            serde_json::to_vec(&v).unwrap()
        } else {
            let mut bytes = serde_json::to_vec(&v).unwrap();
            mutate_bytes(&mut bytes, rng);
            bytes
        };
        match decode::<T>(&bytes, &limits) {
            Ok(event) => {
                accepted += 1;
                let again = serde_json::to_vec(&event).unwrap();
                decode::<T>(&again, &limits).expect("an accepted event re-validates");
            }
            Err(reject) => {
                assert!(!reject.path.is_empty() && !reject.message.is_empty());
                rejected += 1;
            }
        }
    }
    (accepted, rejected)
}

#[test]
fn decoder_never_panics_on_100k_generated_inputs() {
    let mut rng = StdRng::seed_from_u64(0xA10F);
    let (ra, rr) = run::<RetrievalEvent>(&mut rng, CASES / 2);
    let (aa, ar) = run::<AnswerEvent>(&mut rng, CASES / 2);
    assert_eq!(ra + rr + aa + ar, CASES);
    // Both outcomes must be exercised, or the generator is not testing anything.
    assert!(
        ra > 1_000 && rr > 1_000 && aa > 1_000 && ar > 1_000,
        "{ra} {rr} {aa} {ar}"
    );
}
