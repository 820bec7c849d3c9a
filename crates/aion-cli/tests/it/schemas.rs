//! `aion schemas register` against a stand-in for a schema registry: an in-test HTTP server
//! serving the four routes of Confluent's REST API the command uses (no registry runs offline
//! here). It records what it was sent, dedupes identical schemas as registries do, and refuses one
//! subject as incompatible.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Json;
use serde_json::{json, Value};

#[derive(Default)]
struct Subjects {
    compatibility: BTreeMap<String, String>,
    /// Per subject, its registered versions: (id, request body).
    versions: BTreeMap<String, Vec<(u64, Value)>>,
    next_id: u64,
    incompatible: Option<String>,
}

type Shared = Arc<Mutex<Subjects>>;

async fn set_config(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let level = body["compatibility"].as_str().unwrap().to_owned();
    s.lock()
        .unwrap()
        .compatibility
        .insert(subject, level.clone());
    Json(json!({ "compatibility": level }))
}

async fn register(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut s = s.lock().unwrap();
    if s.incompatible.as_deref() == Some(subject.as_str()) {
        let message = "Schema being registered is incompatible with an earlier schema for subject";
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error_code": 409, "message": message })),
        );
    }
    let existing = s.versions.get(&subject).and_then(|v| {
        v.iter()
            .find(|(_, b)| b["schema"] == body["schema"])
            .map(|(id, _)| *id)
    });
    let id = match existing {
        Some(id) => id,
        None => {
            s.next_id += 1;
            let id = s.next_id;
            s.versions.entry(subject).or_default().push((id, body));
            id
        }
    };
    (StatusCode::OK, Json(json!({ "id": id })))
}

async fn latest(State(s): State<Shared>, Path(subject): Path<String>) -> (StatusCode, Json<Value>) {
    let s = s.lock().unwrap();
    match s.versions.get(&subject) {
        Some(v) => (
            StatusCode::OK,
            Json(json!({ "subject": subject, "version": v.len(), "id": v.last().unwrap().0 })),
        ),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error_code": 40401 }))),
    }
}

fn register_command(url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_aion"))
        .args(["schemas", "register", "--registry", url])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_topic_schema_is_registered_with_its_references_and_a_refusal_is_reported() {
    let subjects = Shared::default();
    let app = axum::Router::new()
        .route("/config/{subject}", put(set_config))
        .route("/subjects/{subject}/versions", post(register))
        .route("/subjects/{subject}/versions/latest", get(latest))
        .with_state(subjects.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let run = |url: String| tokio::task::spawn_blocking(move || register_command(&url));
    let out = run(url.clone()).await.unwrap();
    crate::succeeded(&out);
    let printed = String::from_utf8(out.stdout).unwrap();
    {
        let s = subjects.lock().unwrap();
        assert_eq!(s.versions.len(), aion_events::SCHEMA_FILES.len());
        for file in aion_events::SCHEMA_FILES {
            let subject = format!("{}-value", file.topic);
            assert_eq!(s.compatibility[&subject], "BACKWARD");
            let (_, body) = &s.versions[&subject][0];
            assert_eq!(body["schemaType"], "JSON");
            let on_disk =
                std::fs::read_to_string(crate::repo_file(&format!("schemas/{}", file.file)))
                    .unwrap();
            assert_eq!(body["schema"], on_disk.as_str());
            let expected = if file.text.contains("\"retrieval.v1.schema.json#") {
                json!([{ "name": "retrieval.v1.schema.json", "subject": "retrieval.v1-value", "version": 1 }])
            } else {
                json!([])
            };
            assert_eq!(body["references"], expected, "{subject}");
            assert!(printed.contains(&format!("{subject}\tid ")), "{printed}");
        }
    }
    // Again: the registry dedupes, so the same ids come back and no version is added.
    let again = run(url.clone()).await.unwrap();
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap(), printed);

    subjects.lock().unwrap().incompatible = Some("metrics.v1-value".into());
    let refused = run(url).await.unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("409") && err.contains("incompatible") && err.contains("metrics.v1-value"),
        "{err}"
    );
}
