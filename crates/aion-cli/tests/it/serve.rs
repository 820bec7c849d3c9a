//! The control API through the real broker: health, 401 without the token, 400 on bad settings,
//! settings persisted where the gate reads them, 409 on cancel while idle and on a double start,
//! a start publishing a trigger and a cancel a control message; and no token, no public address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aion_kafka::Reader;
use serde_json::{json, Value};

use crate::Stack;

/// One HTTP/1.1 request; (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the server answers /healthz.
pub fn wait_healthy(port: u16, s: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        http(port, "GET", "/healthz", None, None),
        (200, "ok".into()),
        "{}",
        s.logs()
    );
}

#[test]
fn the_api_guards_its_routes_and_drives_training() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = s.spawn(
        &["serve", "--addr", &addr, "--token", "secret"],
        "serve.log",
    );
    wait_healthy(port, &s);
    let token = Some("secret");

    let (status, body) = http(port, "GET", "/", None, None);
    assert!(
        status == 200 && body.contains("AION Stream"),
        "{status} {body}"
    );
    let (status, settings) = http(port, "GET", "/api/ai/settings", None, None);
    let settings: Value = serde_json::from_str(&settings).unwrap();
    assert_eq!(
        (status, settings["tau_fallback"].as_f64()),
        (200, Some(0.18))
    );

    let change = json!({"tau_fallback": 0.25, "cooldown_hours": 1.0});
    assert_eq!(
        http(port, "PUT", "/api/ai/settings", None, Some(change.clone())).0,
        401
    );
    assert_eq!(
        http(
            port,
            "PUT",
            "/api/ai/settings",
            Some("wrong"),
            Some(change.clone())
        )
        .0,
        401
    );
    for bad in [
        json!({"tau_fallback": 1.5}),
        json!({"cooldown_hours": -1}),
        json!({"tau": 0.1}),
        json!({"tau_ndcg": "high"}),
    ] {
        let (status, body) = http(port, "PUT", "/api/ai/settings", token, Some(bad.clone()));
        assert_eq!(status, 400, "{bad} → {body}");
        assert!(body.contains("error"), "{body}");
    }
    let (status, body) = http(port, "PUT", "/api/ai/settings", token, Some(change));
    assert_eq!(status, 200, "{body}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(s.state.path().join("gate/settings.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            saved["tau_fallback"].as_f64(),
            saved["cooldown_hours"].as_f64()
        ),
        (Some(0.25), Some(1.0))
    );
    assert_eq!(
        saved["tau_ndcg"].as_f64(),
        Some(0.82),
        "untouched settings keep their value"
    );

    assert_eq!(
        http(port, "GET", "/api/ai/metrics?tenant=../x", None, None).0,
        400
    );
    assert_eq!(
        http(port, "GET", "/api/ai/metrics", None, None).0,
        400,
        "tenant scoping"
    );
    let (status, body) = http(port, "GET", "/api/ai/metrics?tenant=acme", None, None);
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["points"]
                .as_array()
                .map(Vec::len)
        ),
        (200, Some(0))
    );

    let tenant = json!({"tenant_id": "acme"});
    let (status, body) = http(
        port,
        "POST",
        "/api/ai/train/lora/cancel",
        token,
        Some(tenant.clone()),
    );
    assert_eq!(status, 409, "cancel while idle: {body}");
    assert_eq!(
        http(
            port,
            "POST",
            "/api/ai/train/lora/start",
            None,
            Some(tenant.clone())
        )
        .0,
        401
    );
    let (status, body) = http(
        port,
        "POST",
        "/api/ai/train/lora/start",
        token,
        Some(json!({"tenant_id": "acme", "note": "test"})),
    );
    assert_eq!(status, 202, "{body}");
    let job = serde_json::from_str::<Value>(&body).unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = http(
        port,
        "POST",
        "/api/ai/train/lora/start",
        token,
        Some(tenant.clone()),
    );
    assert_eq!(status, 409, "double start: {body}");
    let (_, body) = http(
        port,
        "GET",
        "/api/ai/train/lora/status?tenant=acme",
        None,
        None,
    );
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            st["running"]["job_id"].as_str(),
            st["running"]["state"].as_str()
        ),
        (Some(job.as_str()), Some("queued"))
    );
    let (status, body) = http(
        port,
        "POST",
        "/api/ai/train/lora/cancel",
        token,
        Some(tenant),
    );
    assert_eq!(status, 202, "{body}");

    let triggers = Reader::new(&s.kafka, &["train.trigger.v1"], true)
        .unwrap()
        .drain(Duration::from_secs(3), Some(1))
        .unwrap();
    let trigger: Value = serde_json::from_slice(&triggers[0].payload).unwrap();
    assert_eq!(
        (trigger["trigger_id"].as_str(), trigger["reason"].as_str()),
        (Some(job.as_str()), Some("manual"))
    );
    let controls = Reader::new(&s.kafka, &["train.control.v1"], true)
        .unwrap()
        .drain(Duration::from_secs(3), Some(1))
        .unwrap();
    let control: Value = serde_json::from_slice(&controls[0].payload).unwrap();
    assert_eq!(
        (control["job_id"].as_str(), control["action"].as_str()),
        (Some(job.as_str()), Some("cancel"))
    );

    // No token: refused on a public address, and on loopback without the explicit flag.
    for args in [
        vec!["serve", "--addr", "0.0.0.0:0", "--insecure-loopback"],
        vec!["serve", "--addr", "127.0.0.1:0"],
    ] {
        let out = s.aion().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("without a token"),
            "{args:?}"
        );
    }
}
