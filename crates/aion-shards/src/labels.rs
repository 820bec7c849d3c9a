//! The `labels` table: one row per human label from `labels.v1` (`event_id` of the labelled
//! answer or retrieval, `labelled_at`, `labeller`, `correct`, `query`, and `judgments` as JSON
//! text `[{"doc_id":…,"rel":…}]`), partitioned by tenant and the day it was labelled.
//!
//! The query is user text: with redaction on it is redacted like a prompt, and `query_key` (the
//! digest of the original normalised query, [`aion_labels::query_key`]) is what the windows
//! stage matches later retrievals by.

use std::sync::Arc;

use aion_events::LabelEvent;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::SchemaRef;

use crate::redact::{Counts, Redactor};
use crate::writer::ShardRecord;
use crate::Result;

/// A label with its row key: one row per (labelled item, labeller, label time), so a corrected
/// label is a new row while a replayed one is not.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    key: String,
    /// [`aion_labels::query_key`] of the query as labelled, before any redaction.
    query_key: Option<String>,
    pub label: LabelEvent,
}

impl From<LabelEvent> for LabelRow {
    fn from(label: LabelEvent) -> Self {
        Self {
            key: label.key(),
            query_key: label.query.as_deref().map(aion_labels::query_key),
            label,
        }
    }
}

impl ShardRecord for LabelRow {
    fn event_id(&self) -> &str {
        &self.key
    }

    fn tenant_id(&self) -> &str {
        &self.label.tenant_id
    }

    fn date(&self) -> String {
        self.label.labelled_at.format("%Y-%m-%d").to_string()
    }

    fn redact(&mut self, redactor: &Redactor, counts: &mut Counts) {
        if let Some(query) = &mut self.label.query {
            *query = redactor.redact(query, counts);
        }
        self.label.labeller = redactor.redact(&self.label.labeller, counts);
    }

    fn size(&self) -> usize {
        self.label.query.as_ref().map_or(0, String::len)
            + self.label.judgments.as_ref().map_or(0, |j| j.len() * 32)
            + 96
    }

    fn schema() -> SchemaRef {
        aion_events::layout::schemas::labels()
    }

    fn batch(rows: &[(Self, i64)], partition: i32) -> Result<RecordBatch> {
        let n = rows.len();
        let text = || StringBuilder::with_capacity(n, n * 24);
        let (mut id, mut labeller, mut query, mut judgments) = (text(), text(), text(), text());
        let mut query_key = StringBuilder::with_capacity(n, n * 64);
        let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut correct = BooleanBuilder::with_capacity(n);
        let mut source_partition = Int32Builder::with_capacity(n);
        let mut source_offset = Int64Builder::with_capacity(n);
        for (row, offset) in rows {
            let l = &row.label;
            id.append_value(&l.event_id);
            at.append_value(l.labelled_at.timestamp_micros());
            labeller.append_value(&l.labeller);
            correct.append_option(l.correct);
            query.append_option(l.query.as_deref());
            query_key.append_option(row.query_key.as_deref());
            match &l.judgments {
                Some(j) => judgments.append_value(serde_json::to_string(j).map_err(|e| {
                    crate::Error::Manifest(format!("judgments of {}: {e}", l.event_id))
                })?),
                None => judgments.append_null(),
            }
            source_partition.append_value(partition);
            source_offset.append_value(*offset);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(at.finish()),
            Arc::new(labeller.finish()),
            Arc::new(correct.finish()),
            Arc::new(query.finish()),
            Arc::new(query_key.finish()),
            Arc::new(judgments.finish()),
            Arc::new(source_partition.finish()),
            Arc::new(source_offset.finish()),
        ];
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use aion_events::Judgment;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::writer::{RollPolicy, ShardWriter};

    fn label(id: &str, at: &str, correct: Option<bool>) -> LabelEvent {
        LabelEvent {
            event_id: id.into(),
            tenant_id: "acme".into(),
            labelled_at: at.parse().unwrap(),
            labeller: "ana".into(),
            correct,
            query: correct.is_none().then(|| "refund policy".into()),
            judgments: correct.is_none().then(|| {
                vec![Judgment {
                    doc_id: "kb-1".into(),
                    rel: 3,
                }]
            }),
        }
    }

    #[test]
    fn labels_are_written_once_per_item_labeller_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut w: ShardWriter<LabelRow, ()> =
            ShardWriter::open(dir.path(), RollPolicy::default(), None).unwrap();
        let first = label("a-1", "2026-11-30T10:00:00Z", Some(false));
        let corrected = label("a-1", "2026-11-30T11:00:00Z", Some(true));
        assert!(w.push(0, 0, first.clone().into(), ()));
        assert!(!w.push(0, 1, first.into(), ()), "same key twice");
        assert!(w.push(0, 2, corrected.into(), ()));
        assert!(w.push(0, 3, label("r-1", "2026-11-30T12:00:00Z", None).into(), ()));
        let (_, entries) = w
            .roll(Instant::now() + Duration::from_secs(3600), true)
            .unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries[0]
            .path
            .starts_with("tenant_id=acme/date=2026-11-30/"));
        let file = std::fs::File::open(dir.path().join(&entries[0].path)).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(batch.num_rows(), 3);
        let correct = batch.column(3).as_boolean();
        assert_eq!(
            (0..3)
                .map(|i| correct.is_valid(i).then(|| correct.value(i)))
                .collect::<Vec<_>>(),
            [Some(false), Some(true), None]
        );
        let column = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>();
        assert_eq!(
            column("judgments").value(2),
            r#"[{"doc_id":"kb-1","rel":3}]"#
        );
        assert_eq!(
            column("query_key").value(2),
            aion_labels::query_key("Refund  Policy?"),
            "keyed like the windows stage keys a retrieval's query"
        );
    }

    #[test]
    fn the_query_is_redacted_and_keyed_as_labelled() {
        let mut l = label("r-1", "2026-11-30T09:00:00Z", None);
        l.query = Some("Refund for ana.souza@mail.com?".into());
        let mut row = LabelRow::from(l);
        let mut counts = Counts::new();
        row.redact(&Redactor::new(), &mut counts);
        assert_eq!(row.label.query.as_deref(), Some("Refund for <EMAIL>?"));
        assert_eq!(
            row.query_key,
            Some(aion_labels::query_key("refund for ana.souza@mail.com"))
        );
    }
}
