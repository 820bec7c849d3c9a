//! Every class of bad input named by the contract is rejected with the path of the offending field.

use aion_events::{decode, AnswerEvent, DecodeLimits, Reject, RetrievalEvent};
use serde_json::{json, Value};

use crate::examples;

fn retrieval() -> Value {
    examples("retrieval.v1")[0].clone()
}

fn answer() -> Value {
    examples("answer.v1")[0].clone()
}

fn reject_retrieval(payload: &[u8]) -> Reject {
    decode::<RetrievalEvent>(payload, &DecodeLimits::default()).expect_err("must be rejected")
}

fn with(mut v: Value, pointer: &str, new: Value) -> Vec<u8> {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}")) = new;
    serde_json::to_vec(&v).unwrap()
}

fn without(mut v: Value, field: &str) -> Vec<u8> {
    v.as_object_mut().unwrap().remove(field);
    serde_json::to_vec(&v).unwrap()
}

#[track_caller]
fn assert_reject(r: Reject, path: &str, message: &str) {
    assert_eq!(r.path, path, "wrong path in {r}");
    assert!(
        r.message.contains(message),
        "{r:?} does not mention {message:?}"
    );
}

#[test]
fn malformed_json() {
    assert_reject(
        reject_retrieval(b"{\"event_id\": \"x\","),
        ".",
        "EOF while parsing",
    );
    assert_reject(reject_retrieval(b"not json"), ".", "expected ident");
    let mut trailing = serde_json::to_vec(&retrieval()).unwrap();
    trailing.extend_from_slice(b" {}");
    assert_reject(reject_retrieval(&trailing), ".", "trailing characters");
    assert_reject(reject_retrieval(b""), ".", "empty payload");
}

#[test]
fn schema_registry_frames_hold_the_document_and_a_bare_header_is_refused() {
    let plain = serde_json::to_vec(&retrieval()).unwrap();
    let mut framed = vec![0, 0, 0, 0, 42];
    framed.extend_from_slice(&plain);
    let limits = DecodeLimits::default();
    assert_eq!(
        decode::<RetrievalEvent>(&framed, &limits).unwrap(),
        decode::<RetrievalEvent>(&plain, &limits).unwrap()
    );
    // The framed document is validated like any other.
    let mut bad = vec![0, 0, 0, 0, 42];
    bad.extend_from_slice(&with(retrieval(), "/tenant_id", json!("../x")));
    assert_reject(reject_retrieval(&bad), "tenant_id", "tenant_id");
    assert_reject(reject_retrieval(&[0, 0, 0, 1]), ".", "holds no document");
    assert_reject(reject_retrieval(&[0, 0, 0, 0, 1]), ".", "holds no document");
}

#[test]
fn invalid_utf8() {
    let mut bytes = serde_json::to_vec(&retrieval()).unwrap();
    let at = bytes.windows(4).position(|w| w == b"Qual").unwrap();
    bytes[at] = 0xff;
    assert_reject(
        reject_retrieval(&bytes),
        ".",
        &format!("invalid UTF-8 at byte {at}"),
    );
}

#[test]
fn missing_required_fields() {
    for field in ["event_id", "tenant_id", "ts", "query", "results"] {
        assert_reject(
            reject_retrieval(&without(retrieval(), field)),
            ".",
            &format!("missing field `{field}`"),
        );
    }
    let mut v = retrieval();
    v["results"][1].as_object_mut().unwrap().remove("doc_id");
    assert_reject(
        reject_retrieval(&serde_json::to_vec(&v).unwrap()),
        "results[1]",
        "missing field `doc_id`",
    );
}

#[test]
fn wrong_types() {
    assert_reject(
        reject_retrieval(&with(retrieval(), "/query", json!(42))),
        "query",
        "invalid type",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results", json!({}))),
        "results",
        "invalid type",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/0/score", json!("high"))),
        "results[0].score",
        "invalid type",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/ts", json!("yesterday"))),
        "ts",
        "input contains invalid characters",
    );
}

#[test]
fn negative_zero_and_duplicate_ranks() {
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/1/rank", json!(-2))),
        "results[1].rank",
        "invalid value",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/1/rank", json!(0))),
        "results[1].rank",
        "rank must be >= 1",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/2/rank", json!(1))),
        "results[2].rank",
        "duplicate rank 1 (also at results[0])",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/2/doc_id", json!("kb-17#3"))),
        "results[2].doc_id",
        "duplicate doc_id",
    );
}

#[test]
fn relevance_out_of_range() {
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/0/rel", json!(4))),
        "results[0].rel",
        "out of range 0..=3",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/0/rel", json!(-1))),
        "results[0].rel",
        "invalid value",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/results/0/rel", json!(0.5))),
        "results[0].rel",
        "invalid type",
    );
    assert_reject(
        reject_retrieval(&with(retrieval(), "/judgments/2/rel", json!(9))),
        "judgments[2].rel",
        "out of range",
    );
}

#[test]
fn nan_and_infinite_numbers() {
    // JSON has no NaN/Infinity literals, and overflowing literals must not become inf.
    let text = String::from_utf8(serde_json::to_vec(&retrieval()).unwrap()).unwrap();
    assert_reject(
        reject_retrieval(text.replace("0.91", "NaN").as_bytes()),
        "results[0].score",
        "expected value",
    );
    assert_reject(
        reject_retrieval(text.replace("0.91", "1e999").as_bytes()),
        "results[0].score",
        "number out of range",
    );
    let answer = String::from_utf8(serde_json::to_vec(&answer()).unwrap()).unwrap();
    let r = decode::<AnswerEvent>(
        answer.replace("0.86", "-Infinity").as_bytes(),
        &DecodeLimits::default(),
    )
    .unwrap_err();
    assert_reject(r, "confidence", "");
    let r = decode::<AnswerEvent>(
        &with(self::answer(), "/confidence", json!(1.5)),
        &DecodeLimits::default(),
    )
    .unwrap_err();
    assert_reject(r, "confidence", "within 0..=1");
}

#[test]
fn bad_tenants() {
    for (tenant, message) in [
        ("", "must not be empty"),
        ("acme/../other", "contains '/'"),
        ("..", "must start with a letter or digit"),
        ("a..b", "must not contain '..'"),
        ("/etc", "contains '/'"),
        ("acme\u{7}", "contains '\\u{7}'"),
        ("acme\n", "contains '\\n'"),
    ] {
        assert_reject(
            reject_retrieval(&with(retrieval(), "/tenant_id", json!(tenant))),
            "tenant_id",
            message,
        );
    }
}

#[test]
fn oversized_payload() {
    let mut v = retrieval();
    v["query"] = json!("x".repeat(2 * 1024 * 1024));
    assert_reject(
        reject_retrieval(&serde_json::to_vec(&v).unwrap()),
        ".",
        "exceeds the limit of 1048576 bytes",
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let bytes = with(retrieval(), "/query", json!("ok"));
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["added_in_a_later_minor"] = json!(true);
    assert!(
        decode::<RetrievalEvent>(&serde_json::to_vec(&v).unwrap(), &DecodeLimits::default())
            .is_ok()
    );
}
