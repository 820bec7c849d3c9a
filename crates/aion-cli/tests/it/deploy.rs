//! The deployment files against the product: the compose file validates and its aion services run
//! commands the binary accepts; every metric the sources emit, the docs name and the monitoring
//! files query is in the catalogue (`aion_events::telemetry`).

use std::collections::BTreeSet;
use std::process::Command;

use aion_events::telemetry::{MetricKind, METRICS};
use serde_json::Value;

/// `files` (YAML) as JSON values, read by PyYAML.
fn yaml(files: &[&str]) -> Vec<Value> {
    let script = "import json, sys, yaml\nprint(json.dumps([yaml.safe_load(open(f)) for f in sys.argv[1:]]))";
    let out = Command::new(aion_broker::cache_dir().join("venv/bin/python"))
        .args(["-c", script])
        .args(files)
        .output()
        .expect("run python (scripts/setup --tests installs it)");
    crate::succeeded(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn the_compose_file_validates_and_its_services_run_commands_aion_accepts() {
    let compose = crate::repo_file("docker-compose.yml");
    let resolved = tempfile::NamedTempFile::new().unwrap();
    // Debian's docker-compose validates (and resolves anchors) without a Docker engine.
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(&compose)
        .args(["--profile", "gpu", "--profile", "observability", "config"])
        .env("AION_API_TOKEN", "test")
        .output()
        .expect("run docker-compose (scripts/setup --tests installs it)");
    crate::succeeded(&out);
    std::fs::write(resolved.path(), &out.stdout).unwrap();
    let prometheus = crate::repo_file("deploy/prometheus.yml");
    let [compose, prometheus] = <[Value; 2]>::try_from(yaml(&[
        resolved.path().to_str().unwrap(),
        prometheus.to_str().unwrap(),
    ]))
    .unwrap();

    let services = compose["services"].as_object().unwrap();
    let mut stages = BTreeSet::new();
    for (name, service) in services {
        let image = service["image"].as_str().unwrap_or_default();
        if !image.starts_with("aion:") {
            continue;
        }
        let command = strings(&service["command"]);
        assert_ne!(
            command[0], "relay",
            "{name}: no stage reads the relay's topics"
        );
        let help = Command::new(env!("CARGO_BIN_EXE_aion"))
            .args(&command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "{name}: `aion {}` is not a command aion accepts: {}",
            command.join(" "),
            String::from_utf8_lossy(&help.stderr)
        );
        if name == "topics" {
            // The product's own topic list, not a copy that drifts.
            assert_eq!(command, ["topics", "create"]);
            continue;
        }
        stages.insert(name.clone());
        let mounts = strings(&service["volumes"]).join(" ");
        assert!(mounts.contains(":/var/lib/aion"), "{name}: no state volume");
        assert!(
            mounts.contains(":/var/cache/aion/models"),
            "{name}: no models volume"
        );
        let deps = service["depends_on"].as_object().unwrap();
        assert!(
            deps.contains_key("topics") && deps.contains_key("models"),
            "{name}"
        );
    }
    for stage in [
        "windows",
        "enrich",
        "shards",
        "gate",
        "trainer",
        "trainer-gpu",
        "panel",
    ] {
        assert!(
            stages.contains(stage),
            "{stage} missing from the compose file"
        );
    }
    // Without a profile the CPU trainer runs; the GPU one only when asked for.
    assert!(services["trainer"].get("profiles").is_none());
    assert_eq!(strings(&services["trainer-gpu"]["profiles"]), ["gpu"]);
    assert_eq!(
        strings(&services["models"]["command"]),
        ["bash", "/opt/aion-models/install", "/models"]
    );
    assert!(crate::repo_file("scripts/models/install").is_file());
    // Prometheus scrapes every stage.
    let scraped: BTreeSet<String> =
        strings(&prometheus["scrape_configs"][0]["dns_sd_configs"][0]["names"])
            .into_iter()
            .collect();
    assert_eq!(scraped, stages);
}

/// `aion_…` names in `text`, without a histogram's `_bucket`/`_sum`/`_count` suffix.
fn metric_names(text: &str) -> BTreeSet<String> {
    let histogram = BTreeSet::from_iter(
        METRICS
            .iter()
            .filter(|m| m.kind == MetricKind::Histogram)
            .map(|m| m.name),
    );
    regex::Regex::new(r"\baion_[a-z_]+")
        .unwrap()
        .find_iter(text)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|n| histogram.contains(n)))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// Every PromQL expression of the alert rules and the dashboard parses (what `promtool check
/// rules` would refuse first), the rules carry what an on-call needs, and the dashboard queries
/// the provisioned data source.
#[test]
fn the_alert_rules_and_the_dashboard_are_valid_promql() {
    let [alerts, datasources] = <[Value; 2]>::try_from(yaml(&[
        crate::repo_file("deploy/alerts.yml").to_str().unwrap(),
        crate::repo_file("deploy/grafana/datasources/prometheus.yml")
            .to_str()
            .unwrap(),
    ]))
    .unwrap();
    let parse = |expr: &str, what: &str| {
        promql_parser::parser::parse(expr)
            .unwrap_or_else(|e| panic!("{what}: {expr:?} is not PromQL: {e}"));
    };
    let rules = alerts["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 4);
    for rule in rules {
        let name = rule["alert"].as_str().unwrap();
        parse(rule["expr"].as_str().unwrap(), name);
        assert!(rule["labels"]["severity"].is_string(), "{name}");
        assert!(rule["annotations"]["summary"].is_string(), "{name}");
    }
    let uid = datasources["datasources"][0]["uid"].as_str().unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::repo_file("deploy/grafana/dashboards/aion.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], uid, "{title}");
        for target in panel["targets"].as_array().unwrap() {
            parse(target["expr"].as_str().unwrap(), title);
        }
    }
}

#[test]
fn every_metric_emitted_documented_or_queried_is_in_the_catalogue() {
    let catalogue: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
    let emit = regex::Regex::new(r#"(counter|gauge|histogram)!\(\s*"(aion_[a-z_]+)""#).unwrap();
    let mut emitted = BTreeSet::new();
    let mut dirs = vec![crate::repo_file("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for c in emit.captures_iter(&text) {
                    let m = METRICS.iter().find(|m| m.name == &c[2]);
                    let m = m.unwrap_or_else(|| {
                        panic!("{} emits {} outside the catalogue", path.display(), &c[2])
                    });
                    let kind = match &c[1] {
                        "counter" => MetricKind::Counter,
                        "gauge" => MetricKind::Gauge,
                        _ => MetricKind::Histogram,
                    };
                    assert_eq!(m.kind, kind, "{}: {}", path.display(), m.name);
                    emitted.insert(m.name);
                }
            }
        }
    }
    assert_eq!(emitted, catalogue, "catalogue entries nothing emits");
    let usage = std::fs::read_to_string(crate::repo_file("docs/usage.md")).unwrap();
    for m in METRICS {
        assert!(
            usage.contains(m.name),
            "docs/usage.md does not name {}",
            m.name
        );
        assert!(!m.help.is_empty());
    }
    for file in ["deploy/alerts.yml", "deploy/grafana/dashboards/aion.json"] {
        let text = std::fs::read_to_string(crate::repo_file(file)).unwrap();
        let queried = metric_names(&text);
        assert!(!queried.is_empty(), "{file}");
        for name in queried {
            assert!(
                catalogue.contains(name.as_str()),
                "{file} queries {name}, which nothing emits"
            );
        }
    }
}
