//! Clients of a secured cluster: TLS with SCRAM authentication (`SASL_SSL`), and batches another
//! client compressed with zstd.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aion_broker::Broker;
use aion_kafka::{create_topics, partition_count, KafkaConfig, Reader, Sink, TopicSpec};

/// Fails the test with the command's standard error unless it succeeded.
#[track_caller]
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for 127.0.0.1, as `cert.pem` and `key.pem` in `dir`.
fn certificate(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("run openssl");
    succeeded(&out);
}

fn sasl_ssl(broker: &Broker, ca: &Path, password: &str) -> KafkaConfig {
    let mut kafka = KafkaConfig::new(broker.bootstrap());
    for (k, v) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "alice"),
        ("sasl.password", password),
        ("ssl.ca.location", ca.to_str().unwrap()),
    ] {
        kafka.properties.insert(k.into(), v.into());
    }
    kafka
}

/// Produces `values` to `topic` with confluent-kafka (Python), zstd-compressed, over the same
/// secured connection.
fn python_produce_zstd(kafka: &KafkaConfig, topic: &str, values: &[String]) {
    let mut config = kafka.properties.clone();
    config.insert("bootstrap.servers".into(), kafka.brokers.clone());
    config.insert("compression.type".into(), "zstd".into());
    config.insert("linger.ms".into(), "50".into());
    let script = r#"
import json, sys
from confluent_kafka import Producer
config, topic, values = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
producer = Producer(config)
for v in values:
    producer.produce(topic, value=v.encode())
assert producer.flush(30) == 0, "undelivered records"
"#;
    let out = Command::new(aion_broker::cache_dir().join("venv/bin/python"))
        .args(["-c", script])
        .arg(serde_json::to_string(&config).unwrap())
        .arg(topic)
        .arg(serde_json::to_string(values).unwrap())
        .output()
        .expect("run python (scripts/setup --tests installs it)");
    succeeded(&out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sasl_ssl_cluster_is_read_and_written_and_zstd_batches_decode() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let broker = Broker::start_temporary_secured(&cert, &key, &[("alice", "s3cret")]).unwrap();
    let kafka = sasl_ssl(&broker, &cert, "s3cret");

    let spec = TopicSpec {
        name: "secured".into(),
        partitions: 1,
        replication: 1,
    };
    create_topics(&kafka, &[spec]).await.unwrap();
    // Another client's zstd batches, then our own producer's records.
    let theirs: Vec<String> = (0..50)
        .map(|i| format!("zstd record {i} {}", "x".repeat(200)))
        .collect();
    python_produce_zstd(&kafka, "secured", &theirs);
    let sink = Sink::new(&kafka, "test").unwrap();
    sink.send("secured", None, b"ours", None, None)
        .await
        .unwrap();
    sink.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(sink.failed_deliveries(), 0);

    let read: Vec<String> = Reader::new(&kafka, &["secured"], true)
        .unwrap()
        .drain(Duration::from_secs(3), Some(51))
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.payload).unwrap())
        .collect();
    let mut expected = theirs;
    expected.push("ours".into());
    assert_eq!(read, expected);

    // A wrong password is refused, not waited on forever.
    let wrong = sasl_ssl(&broker, &cert, "guess");
    let err = partition_count(&wrong, "secured").unwrap_err().to_string();
    assert!(err.contains(&broker.bootstrap()), "{err}");
    // Plain TLS builds a client too (librdkafka without OpenSSL refuses the setting itself).
    let mut ssl = KafkaConfig::new(broker.bootstrap());
    ssl.properties
        .insert("security.protocol".into(), "SSL".into());
    Sink::new(&ssl, "test").unwrap();
}
