//! What a process serves on `--metrics-addr`: `/metrics` (Prometheus text, every metric of the
//! catalogue described, histograms with buckets), `/healthz` (the process answers) and `/readyz`
//! (its consumers have their partitions, [`aion_kafka::joined`]).

use std::net::SocketAddr;
use std::time::Duration;

use aion_events::telemetry::{MetricKind, METRICS, SECONDS_BUCKETS};
use anyhow::{Context as _, Result};
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process's metrics recorder: every metric of the catalogue described, histograms
/// with buckets, `aion_build_info` set. Fails if one is installed already.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)?
        .install_recorder()?;
    describe();
    // Which build is running, for dashboards that compare versions across processes.
    metrics::gauge!("aion_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Histograms keep raw samples until an upkeep folds them into their buckets.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Binds `addr` (so a taken port fails here, at start), installs the metrics recorder and serves
/// the three endpoints in the background.
pub async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("serving metrics on {addr}"))?;
    let handle = install()?;
    let app = axum::Router::new()
        .route("/metrics", get(move || render(handle.clone())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%addr, error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn render(handle: PrometheusHandle) -> String {
    handle.render()
}

async fn ready() -> (StatusCode, &'static str) {
    if aion_kafka::joined() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for partitions\n")
    }
}

/// HELP and TYPE of every metric of the catalogue.
fn describe() {
    for m in METRICS {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}
