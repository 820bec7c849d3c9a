use aion_events::{
    decode, AnswerEvent, DecodeLimits, EnrichedRetrieval, IndexRebuild, LabelEvent, RetrievalEvent,
    Schema, TrainControl, TrainStatus, TrainTrigger, WindowMetrics,
};

use crate::{examples, schema_dir};

fn examples_decode_and_round_trip<T: Schema + PartialEq + std::fmt::Debug>() {
    let examples = examples(T::NAME);
    assert!(!examples.is_empty(), "{} has no examples", T::NAME);
    for example in examples {
        let bytes = serde_json::to_vec(&example).unwrap();
        let event: T = decode(&bytes, &DecodeLimits::default())
            .unwrap_or_else(|r| panic!("{} example rejected: {r}\n{example}", T::NAME));
        // Rust value → JSON → Rust value is the identity.
        let again: T = decode(
            &serde_json::to_vec(&event).unwrap(),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(event, again);
    }
}

#[test]
fn retrieval_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<RetrievalEvent>();
}

#[test]
fn answer_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<AnswerEvent>();
}

/// The Rust types and the schema files must agree on which fields are required and which exist.
fn schema_fields_match<T: Schema>(example_index: usize) {
    let path = schema_dir().join(format!("{}.schema.json", T::NAME));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let example = &schema["examples"][example_index];
    let event: T = serde_json::from_value(example.clone()).unwrap();
    let json = serde_json::to_value(&event).unwrap();
    for field in &required {
        assert!(
            json.get(field).is_some(),
            "{}: required {field} not serialised",
            T::NAME
        );
        let mut without = example.clone();
        without.as_object_mut().unwrap().remove(*field);
        assert!(
            serde_json::from_value::<T>(without).is_err(),
            "{}: schema requires {field} but the Rust type accepts its absence",
            T::NAME
        );
    }
    for key in json.as_object().unwrap().keys() {
        assert!(
            properties.contains(&key),
            "{}: Rust field {key} missing from schema",
            T::NAME
        );
    }
}

#[test]
fn retrieval_schema_matches_rust_type() {
    schema_fields_match::<RetrievalEvent>(0);
}

#[test]
fn answer_schema_matches_rust_type() {
    schema_fields_match::<AnswerEvent>(0);
}

#[test]
fn metrics_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<WindowMetrics>();
}

#[test]
fn metrics_schema_matches_rust_type() {
    schema_fields_match::<WindowMetrics>(0);
}

#[test]
fn trigger_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<TrainTrigger>();
}

#[test]
fn trigger_schema_matches_rust_type() {
    schema_fields_match::<TrainTrigger>(0);
}

#[test]
fn rebuild_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<IndexRebuild>();
}

#[test]
fn rebuild_schema_matches_rust_type() {
    schema_fields_match::<IndexRebuild>(0);
}

#[test]
fn status_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<TrainStatus>();
}

#[test]
fn status_schema_matches_rust_type() {
    schema_fields_match::<TrainStatus>(1);
}

#[test]
fn control_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<TrainControl>();
}

#[test]
fn control_schema_matches_rust_type() {
    schema_fields_match::<TrainControl>(0);
}

#[test]
fn enriched_examples_decode_and_round_trip() {
    // The Rust type reads only what downstream stages need; the record keeps the whole event.
    for example in examples(EnrichedRetrieval::NAME) {
        let bytes = serde_json::to_vec(&example).unwrap();
        let event: EnrichedRetrieval = decode(&bytes, &DecodeLimits::default()).unwrap();
        let retrieval: RetrievalEvent = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(event.event_id, retrieval.event_id);
        assert!(!event.entities.is_empty());
    }
}

#[test]
fn labels_examples_decode_and_round_trip() {
    examples_decode_and_round_trip::<LabelEvent>();
}

#[test]
fn labels_schema_matches_rust_type() {
    schema_fields_match::<LabelEvent>(0);
}

#[test]
fn labels_need_a_label_and_judgments_need_their_query() {
    let reject = |json: serde_json::Value| {
        decode::<LabelEvent>(
            &serde_json::to_vec(&json).unwrap(),
            &DecodeLimits::default(),
        )
        .unwrap_err()
    };
    let base = serde_json::json!({
        "event_id": "a-1", "tenant_id": "acme", "labelled_at": "2026-11-30T10:00:00Z",
        "labeller": "ana"
    });
    assert_eq!(reject(base.clone()).path, ".");
    let mut j = base.clone();
    j["judgments"] = serde_json::json!([{ "doc_id": "d", "rel": 2 }]);
    assert_eq!(reject(j.clone()).path, "query");
    j["query"] = "refund".into();
    j["judgments"] = serde_json::json!([{ "doc_id": "d", "rel": 4 }]);
    assert_eq!(reject(j.clone()).path, "judgments[0].rel");
    j["judgments"] = serde_json::json!([{ "doc_id": "d", "rel": 1 }, { "doc_id": "d", "rel": 2 }]);
    assert_eq!(reject(j).path, "judgments[1].doc_id");
    let mut t = base;
    t["correct"] = true.into();
    t["tenant_id"] = "../x".into();
    assert_eq!(reject(t).path, "tenant_id");
}

#[test]
fn every_schema_file_is_embedded_as_it_is_on_disk() {
    let mut on_disk: Vec<String> = std::fs::read_dir(schema_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".schema.json"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = aion_events::SCHEMA_FILES
        .iter()
        .map(|f| f.file.to_owned())
        .collect();
    embedded.sort();
    assert_eq!(embedded, on_disk);
    for f in aion_events::SCHEMA_FILES {
        assert_eq!(f.file, format!("{}.schema.json", f.topic));
        assert_eq!(
            f.text,
            std::fs::read_to_string(schema_dir().join(f.file)).unwrap()
        );
    }
    assert_eq!(
        aion_events::SCHEMA_FILES[0].topic,
        aion_events::topics::RETRIEVAL
    );
}
