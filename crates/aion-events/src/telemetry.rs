//! Every metric the product emits, in one place: name, kind and HELP text. A process serving
//! `--metrics-addr` describes them all (Prometheus `# HELP` and `# TYPE` lines) and renders the
//! histograms with [`SECONDS_BUCKETS`]; tests check the sources, `docs/usage.md` and the
//! monitoring files (`deploy/`) against this list.

/// How a metric is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: MetricKind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

use MetricKind::{Counter, Gauge, Histogram};

/// The catalogue. Labels: `stage` on what every stage counts, `topic`/`partition` where a topic's
/// partition is meant.
pub const METRICS: &[Metric] = &[
    metric("aion_build_info", Gauge, "Always 1; the version label says which build of aion runs"),
    metric("aion_received_events_total", Counter, "Records read from the stage's input topics (by stage)"),
    metric("aion_sent_events_total", Counter, "Records the stage published, dead letters not included (by stage)"),
    metric("aion_dlq_events_total", Counter, "Records sent to a dead-letter topic, with the reason in a header (by stage, topic)"),
    metric("aion_stage_errors_total", Counter, "Stage runs that ended in an error; nothing they held was committed (by stage)"),
    metric("aion_stage_handle_seconds", Histogram, "Seconds a stage took to handle one batch of records (by stage)"),
    metric("aion_consume_errors_total", Counter, "Errors the Kafka consumer reported (by stage)"),
    metric("aion_consumer_lag", Gauge, "Records of an input partition not read yet, from librdkafka's statistics every 5 s (by stage, topic, partition)"),
    metric("aion_late_events_total", Counter, "Events that arrived after some of their windows closed (by stage, topic)"),
    metric("aion_window_input_lag", Gauge, "Unread records per input partition of the windows stage, asked of the broker every second (by topic, partition)"),
    metric("aion_windows_held_by_lag", Gauge, "Windows the watermark would close if partitions with unread records did not hold it"),
    metric("aion_window_oldest_open_seconds", Gauge, "Seconds since the first event of the next window to close arrived"),
    metric("aion_window_close_delay_seconds", Histogram, "Seconds from the watermark passing window ends to their results being durable"),
    metric("aion_ner_batch_seconds", Histogram, "Seconds the enricher's model took per batch of retrieval events"),
    metric("aion_ner_segments_total", Counter, "Text segments the enricher labelled (source: the model, or the segment cache)"),
    metric("aion_ner_cache_entries", Gauge, "Segments held in the enricher's cache"),
    metric("aion_ner_cache_bytes", Gauge, "Heap bytes the enricher's cache holds (keys and entities; passages are held as 128-bit keys)"),
    metric("aion_ner_cache_evictions_total", Counter, "Segments evicted from the enricher's cache"),
    metric("aion_redactions_total", Counter, "PII spans replaced by placeholders in the training shards (by type)"),
    metric("aion_shards_committed_total", Counter, "Parquet files committed to a shard table's manifest (by table)"),
    metric("aion_triggers_total", Counter, "Training triggers the gate emitted"),
    metric("aion_train_jobs_total", Counter, "Training jobs that ended, by final state (completed, failed, cancelled)"),
    metric("aion_train_step", Gauge, "The step the newest training job reported (by tenant, job)"),
    metric("aion_train_total_steps", Gauge, "The steps the newest training job will run (by tenant, job)"),
    metric("aion_train_loss", Gauge, "The training loss the newest job reported (by tenant, job)"),
];

/// Histogram buckets (every histogram here measures seconds): a millisecond to ten minutes.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
