//! The entity-mention table: one row per term of an enriched retrieval event (`entities/`), the
//! source of the entity heatmap and of the per-entity quality breakdown.
//!
//! With redaction on, the text of an entity whose type identifies a person (names, contacts,
//! ids, street addresses: [`Pii::of_entity`]) is replaced by its placeholder, and so is any such
//! text the event's terms or word-level mentions hold, inside its keyphrases; cities, states and
//! keyphrases keep their text (after the pattern redaction every shard text gets). The heatmap still shows *that* people were named.

use std::sync::Arc;

use aion_events::EnrichedRetrieval;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::SchemaRef;

use crate::redact::{Counts, Pii, PrivateEntities, Redactor};
use crate::writer::ShardRecord;
use crate::Result;

/// One enriched retrieval of the entity-mention table, with its nDCG@k (computed once, by the
/// stage, with the windows' k and gain): each of its terms' rows carries it, so quality can be
/// broken down by entity.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRow {
    pub event: EnrichedRetrieval,
    pub ndcg: Option<f64>,
}

impl ShardRecord for EntityRow {
    fn event_id(&self) -> &str {
        &self.event.event_id
    }

    fn tenant_id(&self) -> &str {
        &self.event.tenant_id
    }

    fn date(&self) -> String {
        self.event.ts.format("%Y-%m-%d").to_string()
    }

    fn redact(&mut self, redactor: &Redactor, counts: &mut Counts) {
        // Every name the event knows, the word-level mentions included: a keyphrase may hold a
        // surname whose PERSON term is "thiago whitaker".
        let private = PrivateEntities::of(
            self.event
                .entities
                .iter()
                .map(|t| (t.text.as_str(), t.kind.as_str()))
                .chain(
                    self.event
                        .mentions
                        .iter()
                        .map(|m| (m.text.as_str(), m.kind.as_str())),
                ),
        );
        for term in &mut self.event.entities {
            if let Some(pii) = Pii::of_entity(&term.kind) {
                *counts.entry(pii).or_default() += 1;
                term.text = pii.placeholder().to_owned();
                continue;
            }
            let text = redactor.redact(&term.text, counts);
            term.text = private.redact(&text, counts);
        }
    }

    fn size(&self) -> usize {
        self.event.entities.iter().map(|t| t.text.len() + 72).sum()
    }

    fn schema() -> SchemaRef {
        aion_events::layout::schemas::entities()
    }

    fn batch(rows: &[(Self, i64)], partition: i32) -> Result<RecordBatch> {
        let n: usize = rows.iter().map(|(r, _)| r.event.entities.len()).sum();
        let text = |avg: usize| StringBuilder::with_capacity(n, n * avg);
        let (mut id, mut entity, mut kind, mut source) = (text(24), text(16), text(8), text(8));
        let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut score = Int32Builder::with_capacity(n);
        let mut ndcg = Float64Builder::with_capacity(n);
        let mut source_partition = Int32Builder::with_capacity(n);
        let mut source_offset = Int64Builder::with_capacity(n);
        for (row, offset) in rows {
            let e = &row.event;
            for t in &e.entities {
                id.append_value(&e.event_id);
                ts.append_value(e.ts.timestamp_micros());
                entity.append_value(&t.text);
                kind.append_value(&t.kind);
                score.append_value(i32::try_from(t.score).unwrap_or(i32::MAX));
                source.append_value(&t.source);
                ndcg.append_option(row.ndcg);
                source_partition.append_value(partition);
                source_offset.append_value(*offset);
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(ts.finish()),
            Arc::new(entity.finish()),
            Arc::new(kind.finish()),
            Arc::new(score.finish()),
            Arc::new(source.finish()),
            Arc::new(ndcg.finish()),
            Arc::new(source_partition.finish()),
            Arc::new(source_offset.finish()),
        ];
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aion_events::Term;

    fn term(text: &str, kind: &str, score: u32) -> Term {
        Term {
            text: text.into(),
            kind: kind.into(),
            score,
            source: if kind == "KEYPHRASE" {
                "keyphrase"
            } else {
                "ner"
            }
            .into(),
        }
    }

    #[test]
    fn names_and_contacts_become_placeholders_places_and_topics_stay() {
        let event = EnrichedRetrieval {
            event_id: "r1".into(),
            tenant_id: "acme".into(),
            ts: "2026-11-02T10:00:00Z".parse().unwrap(),
            query: "q".into(),
            entities: vec![
                term("maria", "GIVEN_NAME", 3),
                term("são paulo", "CITY", 3),
                term("maria pediu reembolso", "KEYPHRASE", 1),
                term("ligue 11 98765-4321", "KEYPHRASE", 1),
                term("whitaker ligou", "KEYPHRASE", 1),
            ],
            // A name part the top terms do not hold: only the event's mentions know it.
            mentions: vec![aion_events::Mention {
                text: "Whitaker".into(),
                kind: "SURNAME".into(),
                score: 0.9,
            }],
            results: Vec::new(),
            judgments: None,
        };
        let mut e = EntityRow {
            event,
            ndcg: Some(0.5),
        };
        let mut counts = Counts::new();
        e.redact(&Redactor::new(), &mut counts);
        let texts: Vec<&str> = e.event.entities.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "<PERSON>",
                "são paulo",
                "<PERSON> pediu reembolso",
                "ligue <PHONE>",
                "<PERSON> ligou"
            ]
        );
        assert_eq!(counts.get(&Pii::Person), Some(&3));
        let batch = EntityRow::batch(&[(e, 7)], 2).unwrap();
        assert_eq!(batch.num_rows(), 5);
        let ndcg = batch.column_by_name("ndcg").unwrap();
        assert_eq!(
            datafusion::arrow::array::AsArray::as_primitive::<
                datafusion::arrow::datatypes::Float64Type,
            >(ndcg)
            .value(3),
            0.5
        );
    }
}
