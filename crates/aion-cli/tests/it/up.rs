//! The whole loop as README's first command runs it (`aion up`, its own broker, real models):
//! degradation scenario → window metrics → exactly one trigger, for the degraded tenant → the
//! trainer runs a few steps on SmolLM2-135M → adapter written, `completed` → the API shows it; then
//! headless Chromium drives the panel (`scripts/checks/panel_browser.py`): charts with data, Start,
//! the job running, Cancel, the job cancelled, a screenshot.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::serve::{free_port, http, wait_healthy};
use crate::Stack;

fn get(port: u16, path: &str) -> Value {
    let (status, body) = http(port, "GET", path, None, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_loop_trains_the_degraded_tenant_and_the_panel_drives_a_job() {
    let s = Stack::offline();
    let (broker, api) = (free_port(), free_port());
    let log_path = s.state.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut up = crate::Running::new(
        s.aion()
            .env("AION_LOG", "info")
            .args(["up", "--port", &broker.to_string(), "--api-addr"])
            .arg(format!("127.0.0.1:{api}"))
            .args(["--events", "3000", "--rate", "1500", "--span-hours", "12"])
            .args([
                "--train-max-steps",
                "1",
                "--train-max-len",
                "64",
                "--train-max-examples",
                "40",
                "--summary-secs",
                "5",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        Some(log_path),
    );
    let stop_broker = || {
        s.aion().args(["broker", "stop"]).output().unwrap();
    };
    wait_healthy(api, &s);

    // The degraded tenant's trigger, trained to completion.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut status = Value::Null;
    while Instant::now() < deadline {
        status = get(api, "/api/ai/train/lora/status?tenant=acme");
        if status["history"].as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let history = status["history"].as_array().cloned().unwrap_or_default();
    if history.is_empty() {
        up.kill();
        stop_broker();
        panic!("no finished job for acme: {status}\n{}", s.logs());
    }
    let job = &history[0];
    assert_eq!(job["state"], "completed", "{job}\n{}", s.logs());
    let adapter = std::path::PathBuf::from(job["adapter"].as_str().unwrap());
    assert!(adapter.join("adapter_model.safetensors").is_file(), "{job}");
    let triggers = get(api, "/api/ai/triggers?tenant=acme")["triggers"].clone();
    assert_eq!(triggers.as_array().map(Vec::len), Some(1), "{triggers}");
    assert_ne!(triggers[0]["reason"], "manual");
    for other in ["globex", "initech"] {
        let t = get(api, &format!("/api/ai/triggers?tenant={other}"));
        assert_eq!(
            t["triggers"].as_array().map(Vec::len),
            Some(0),
            "{other}: {t}"
        );
    }
    // No training row names any of the generator's people, whether or not its retrieval was
    // enriched in time.
    let sql = |query: &str| s.run(&["sql", query, "--format", "json"]);
    let written = || -> u64 {
        let out = sql("SELECT count(*) AS n FROM shards");
        serde_json::from_str::<Value>(out.trim()).map_or(0, |v| v["n"].as_u64().unwrap_or(0))
    };
    // ≈ 1,485 of the 3,000 events are valid answers: wait for nearly all of them.
    let deadline = Instant::now() + Duration::from_secs(900);
    while written() < 1_400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(5));
    }
    let rows = sql("SELECT instruction, response FROM shards");
    assert!(
        rows.lines().count() >= 1_400,
        "{} rows",
        rows.lines().count()
    );
    let names: Vec<regex::Regex> = aion_traffic::people()
        .flat_map(|p| p.split(' '))
        .map(|w| regex::Regex::new(&format!(r"(?i)\b{w}\b")).unwrap())
        .collect();
    let named: Vec<&str> = rows
        .lines()
        .filter(|row| names.iter().any(|n| n.is_match(row)))
        .collect();
    assert!(
        named.is_empty(),
        "{} of {} rows name a person, e.g. {:?}",
        named.len(),
        rows.lines().count(),
        &named[..named.len().min(5)]
    );
    let points = get(api, "/api/ai/metrics?tenant=acme&window=tumbling_1h")["points"].clone();
    assert!(points.as_array().is_some_and(|p| p.len() >= 6), "{points}");

    // The panel in a real browser.
    let shot = s.state.path().join("panel.png");
    let out = std::process::Command::new(aion_broker::cache_dir().join("venv/bin/python"))
        .arg(crate::repo_file("scripts/checks/panel_browser.py"))
        .arg(format!("http://127.0.0.1:{api}"))
        .arg("unused-on-loopback")
        .arg(&shot)
        .output()
        .unwrap();
    let keep = std::env::var_os("AION_PANEL_SCREENSHOT");
    if let Some(path) = &keep {
        std::fs::copy(&shot, path).ok();
    }
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let failure = String::from_utf8_lossy(&out.stderr).into_owned();
    up.kill();
    stop_broker();
    assert!(
        out.status.success(),
        "panel check: {report}\n{failure}\n{}",
        s.logs()
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot"
    );
    eprintln!("panel check: {report}");
}
