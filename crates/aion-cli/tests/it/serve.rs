//! The control API through the real broker: health, 401 without the token, 400 on bad settings,
//! settings persisted where the gate reads them, 409 on cancel while idle and on a double start,
//! a start publishing a trigger and a cancel a control message; and no token, no public address.
//! The security suite: every route × role × tenant scope of a tokens file, tokens in URLs,
//! oversized bodies, response headers; loopback mode against forged Host/Origin and without the
//! panel's CSRF secret.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aion_kafka::Reader;
use serde_json::{json, Value};

use crate::Stack;

/// One HTTP/1.1 request with exactly these headers (and Content-Length); (status, response
/// headers, body).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A request as a well-behaved client sends it (the server's own Host, a JSON body); (status,
/// body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let host = format!("127.0.0.1:{port}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Host", host.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, _, body) = request(port, method, path, &headers, &body);
    (status, body)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `aion serve ARGS` on a free loopback port, once it answers /healthz.
fn serve(s: &Stack, args: &[&str]) -> (u16, crate::Running) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut all = vec!["serve", "--addr", &addr];
    all.extend_from_slice(args);
    let server = s.spawn(&all, "serve.log");
    wait_healthy(port, s);
    (port, server)
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
    let (port, _server) = serve(&s, &["--token", "secret"]);
    let token = Some("secret");

    let (status, body) = http(port, "GET", "/", None, None);
    assert!(
        status == 200 && body.contains("AION Stream"),
        "{status} {body}"
    );
    assert_eq!(http(port, "GET", "/api/ai/settings", None, None).0, 401);
    let (status, settings) = http(port, "GET", "/api/ai/settings", token, None);
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
        http(port, "GET", "/api/ai/metrics?tenant=../x", token, None).0,
        400
    );
    assert_eq!(
        http(port, "GET", "/api/ai/metrics", token, None).0,
        400,
        "tenant scoping"
    );
    let (status, body) = http(port, "GET", "/api/ai/metrics?tenant=acme", token, None);
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
        token,
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

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (method, path, body, least role, tenant it concerns); roles: 0 read, 1 operate, 2 admin.
type Route = (
    &'static str,
    String,
    Option<Value>,
    usize,
    Option<&'static str>,
);

/// What a token may do on each route, the whole matrix, through the real server and broker.
#[test]
fn every_route_checks_role_and_tenant_scope() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let tokens = s.state.path().join("tokens.toml");
    let mut file = String::new();
    for (name, role, tenants) in [
        ("reader-acme", "read", "[\"acme\"]"),
        ("operator-acme", "operate", "[\"acme\"]"),
        ("admin-acme", "admin", "[\"acme\"]"),
        ("admin-all", "admin", "[\"*\"]"),
    ] {
        file += &format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\ntenants = {tenants}\n",
            sha256_hex(&format!("{name}-secret"))
        );
    }
    std::fs::write(&tokens, file).unwrap();
    let (port, _server) = serve(&s, &["--tokens-file", &tokens.display().to_string()]);

    let routes: Vec<Route> = ["acme", "globex"]
        .iter()
        .flat_map(|t| {
            [
                (
                    "GET",
                    format!("/api/ai/metrics?tenant={t}"),
                    None,
                    0,
                    Some(*t),
                ),
                (
                    "GET",
                    format!("/api/ai/triggers?tenant={t}"),
                    None,
                    0,
                    Some(*t),
                ),
                (
                    "GET",
                    format!("/api/ai/heatmap?tenant={t}"),
                    None,
                    0,
                    Some(*t),
                ),
                (
                    "GET",
                    format!("/api/ai/train/lora/status?tenant={t}"),
                    None,
                    0,
                    Some(*t),
                ),
                // Cancel while no job runs: 409 once allowed (no side effect).
                (
                    "POST",
                    "/api/ai/train/lora/cancel".into(),
                    Some(json!({"tenant_id": t})),
                    1,
                    Some(*t),
                ),
            ]
        })
        .chain([
            ("GET", "/api/ai/tenants".into(), None, 0, None),
            ("GET", "/api/ai/settings".into(), None, 0, None),
            ("GET", "/metrics".into(), None, 0, None),
            (
                "PUT",
                "/api/ai/settings".into(),
                Some(json!({"tau_ndcg": 0.8})),
                2,
                None,
            ),
        ])
        .collect();
    let roles = [
        ("reader-acme", 0, false),
        ("operator-acme", 1, false),
        ("admin-acme", 2, false),
        ("admin-all", 2, true),
    ];
    for (method, path, body, need, tenant) in &routes {
        assert_eq!(
            http(port, method, path, None, body.clone()).0,
            401,
            "{method} {path} without a token"
        );
        assert_eq!(
            http(port, method, path, Some("nobody-secret"), body.clone()).0,
            401,
            "{method} {path} with an unknown token"
        );
        for (name, role, all) in roles {
            let (status, answer) = http(
                port,
                method,
                path,
                Some(&format!("{name}-secret")),
                body.clone(),
            );
            let in_scope = match tenant {
                Some(t) => all || *t == "acme",
                // Settings apply to every tenant: only an all-tenant admin changes them.
                None => *need < 2 || all,
            };
            let allowed = role >= *need && in_scope;
            if allowed {
                assert!(
                    status == 200 || (path.ends_with("cancel") && status == 409),
                    "{name}: {method} {path} → {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "{name}: {method} {path} → {answer}");
            }
        }
    }

    // A token in the URL is not a token.
    assert_eq!(
        http(
            port,
            "GET",
            "/api/ai/metrics?tenant=acme&token=admin-all-secret",
            None,
            None
        )
        .0,
        401
    );
    // The tenant list shows a scoped token only its tenants; a file written after the table was
    // registered is read (registrations are kept between requests, file listings are not).
    let tenants = |token: &str| {
        let (status, body) = http(port, "GET", "/api/ai/tenants", Some(token), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["tenants"].clone()
    };
    let metrics_dir = s.state.path().join("metrics/date=2026-11-02");
    write_metrics_file(&metrics_dir, "acme");
    assert_eq!(tenants("admin-all-secret"), json!(["acme"]));
    write_metrics_file(&metrics_dir, "globex");
    assert_eq!(tenants("admin-all-secret"), json!(["acme", "globex"]));
    assert_eq!(tenants("reader-acme-secret"), json!(["acme"]));

    // Oversized bodies are refused before anything reads them.
    let big = json!({"tenant_id": "acme", "note": "x".repeat(64 * 1024)});
    let (status, body) = http(
        port,
        "POST",
        "/api/ai/train/lora/start",
        Some("admin-all-secret"),
        Some(big),
    );
    assert_eq!(status, 413, "{body}");

    // Every answer carries the browser protections.
    let host = format!("127.0.0.1:{port}");
    for path in ["/", "/panel.js", "/api/ai/settings", "/healthz"] {
        let (_, head, _) = request(port, "GET", path, &[("Host", &host)], "");
        for header in [
            "content-security-policy: default-src 'none'; script-src 'self'",
            "referrer-policy: no-referrer",
            "x-frame-options: deny",
            "x-content-type-options: nosniff",
        ] {
            assert!(head.contains(header), "{path}: no {header}\n{head}");
        }
    }
    let (_, _, page) = request(port, "GET", "/", &[("Host", &host)], "");
    assert!(
        page.contains("name=\"aion-csrf\" content=\"\""),
        "no CSRF secret with tokens"
    );
}

/// Loopback mode without tokens: a DNS-rebinding page (foreign Host), a cross-origin request and
/// a change without the panel's CSRF secret get nothing.
#[test]
fn loopback_mode_refuses_foreign_hosts_origins_and_changes_without_the_csrf_secret() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let (port, _server) = serve(&s, &["--insecure-loopback"]);
    let host = format!("127.0.0.1:{port}");
    let json = ("Content-Type", "application/json");
    let change = r#"{"tau_fallback": 0.3}"#;

    for (headers, what) in [
        (vec![("Host", "rebound.example")], "foreign host"),
        (
            vec![("Host", &*format!("rebound.example:{port}"))],
            "foreign host with the port",
        ),
        (vec![], "no host"),
        (
            vec![("Host", &*host), ("Origin", "http://rebound.example")],
            "foreign origin",
        ),
    ] {
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/api/ai/settings"),
            ("GET", "/api/ai/metrics?tenant=acme"),
        ] {
            let (status, _, body) = request(port, method, path, &headers, "");
            assert_eq!(status, 403, "{what}: {method} {path} → {body}");
            assert!(!body.contains("aion-csrf"), "{what}: the page leaked");
        }
        let mut with_body = headers.clone();
        with_body.push(json);
        let (status, _, _) = request(port, "PUT", "/api/ai/settings", &with_body, change);
        assert_eq!(status, 403, "{what}: PUT");
    }

    // Reads are open to the loopback host; changes need the page's secret.
    let (status, _, page) = request(port, "GET", "/", &[("Host", &host)], "");
    assert_eq!(status, 200);
    let secret = page
        .split("name=\"aion-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(secret.len(), 64, "{page}");
    let origin = format!("http://{host}");
    let headers = [("Host", &*host), ("Origin", &*origin), json];
    assert_eq!(
        request(port, "PUT", "/api/ai/settings", &headers, change).0,
        403,
        "no secret"
    );
    let zeros = "0".repeat(64);
    let wrong = [("Host", &*host), json, ("X-Aion-Csrf", &*zeros)];
    assert_eq!(
        request(port, "PUT", "/api/ai/settings", &wrong, change).0,
        403,
        "wrong secret"
    );
    let right = [
        ("Host", &*host),
        ("Origin", &*origin),
        json,
        ("X-Aion-Csrf", &*secret),
    ];
    let (status, _, body) = request(port, "PUT", "/api/ai/settings", &right, change);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = request(
        port,
        "GET",
        "/api/ai/settings",
        &[("Host", &*format!("localhost:{port}"))],
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("0.3"), "{body}");
}

/// A one-row Parquet file in a metrics partition directory (the API reads the tenant from the path).
fn write_metrics_file(dir: &std::path::Path, tenant: &str) {
    use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    std::fs::create_dir_all(dir).unwrap();
    let column = |value: &str| -> ArrayRef { std::sync::Arc::new(StringArray::from(vec![value])) };
    let batch = RecordBatch::try_from_iter([
        ("tenant_id", column(tenant)),
        ("window", column("tumbling_1h")),
    ])
    .unwrap();
    let file = std::fs::File::create(dir.join(format!("w-{tenant}.parquet"))).unwrap();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
