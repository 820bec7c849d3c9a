//! What a state directory holds, named once: the Parquet tables (how each is partitioned, and the
//! columns of its files) and the stages' state files. Writers, `aion sql`, the API and the tests
//! take names, paths and schemas from here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// A Parquet table under the state (data) directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Training rows, one per answer (`tenant_id=<t>/date=<d>/`, manifest-committed).
    Shards,
    /// Entity mentions of enriched retrievals (`tenant_id=<t>/date=<d>/`, manifest-committed).
    Entities,
    /// Human labels of `labels.v1` (`tenant_id=<t>/date=<labelled day>/`, manifest-committed).
    Labels,
    /// Answers sent to labelling by `aion label-queue` (`tenant_id=<t>/`).
    LabelQueue,
    /// Closed windows' aggregates (`date=<d>/`, every tenant of a window end in one file).
    Metrics,
    /// Every counted event once, by pane (`date=<d>/`, every tenant of a pane in one file).
    WindowHistory,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Shards,
        Table::Entities,
        Table::Labels,
        Table::LabelQueue,
        Table::Metrics,
        Table::WindowHistory,
    ];

    /// Its directory under the state directory, and its name in SQL.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Shards => "shards",
            Table::Entities => "entities",
            Table::Labels => "labels",
            Table::LabelQueue => "label_queue",
            Table::Metrics => "metrics",
            Table::WindowHistory => "window_history",
        }
    }

    /// Its Hive partition directories, outermost first.
    pub const fn partitions(self) -> &'static [&'static str] {
        match self {
            Table::Shards | Table::Entities | Table::Labels => &["tenant_id", "date"],
            Table::LabelQueue => &["tenant_id"],
            Table::Metrics | Table::WindowHistory => &["date"],
        }
    }

    /// The columns of its files (partition columns come from the directory names), for every
    /// table whose columns the product fixes. `None` for `metrics`: its columns are what the
    /// windows SQL (`pipelines/windows.sql`, the user's to change) selects, plus `tenant_id`.
    pub fn schema(self) -> Option<SchemaRef> {
        match self {
            Table::Shards => Some(schemas::shards()),
            Table::Entities => Some(schemas::entities()),
            Table::Labels => Some(schemas::labels()),
            Table::LabelQueue => Some(schemas::label_queue()),
            Table::WindowHistory => Some(schemas::window_history()),
            Table::Metrics => None,
        }
    }
}

/// The file schemas of [`Table::schema`], for the writers, which build rows of one table each.
pub mod schemas {
    use super::*;

    /// Event time and other instants: microseconds, UTC.
    pub fn timestamp() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    fn text(name: &str) -> Field {
        Field::new(name, DataType::Utf8, false)
    }

    /// The columns of an answer both tables of answers (`shards`, `label_queue`) start with.
    fn answer() -> Vec<Field> {
        vec![
            text("event_id"),
            Field::new("ts", timestamp(), false),
            text("instruction"),
            text("response"),
            Field::new("confidence", DataType::Float64, false),
            Field::new("fallback", DataType::Boolean, false),
        ]
    }

    /// Training rows, one per answer, PII redacted.
    pub fn shards() -> SchemaRef {
        let texts = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
        Arc::new(Schema::new(
            [
                answer(),
                vec![
                    text("provider"),
                    text("model"),
                    // Signed, as Spark, Hive and Athena read it (0.1 wrote UInt64; the shard writer
                    // migrates such files when it opens the table).
                    Field::new("latency_ms", DataType::Int64, false),
                    Field::new("retrieval_event_id", DataType::Utf8, true),
                    // From the joined retrieval: null when it was not seen within the join wait.
                    Field::new("ndcg", DataType::Float64, true),
                    Field::new("entities", texts, true),
                    Field::new("source_partition", DataType::Int32, false),
                    Field::new("source_offset", DataType::Int64, false),
                ],
            ]
            .concat(),
        ))
    }

    /// Entity mentions of enriched retrievals, one row per term.
    pub fn entities() -> SchemaRef {
        Arc::new(Schema::new(vec![
            text("event_id"),
            Field::new("ts", timestamp(), false),
            text("entity"),
            text("type"),
            // Signed, as Spark, Hive and Athena read it (0.1 wrote UInt32).
            Field::new("score", DataType::Int32, false),
            text("source"),
            // nDCG@k of the retrieval; null when it carried no judgment.
            Field::new("ndcg", DataType::Float64, true),
            Field::new("source_partition", DataType::Int32, false),
            Field::new("source_offset", DataType::Int64, false),
        ]))
    }

    /// Human labels of `labels.v1`.
    pub fn labels() -> SchemaRef {
        Arc::new(Schema::new(vec![
            text("event_id"),
            Field::new("labelled_at", timestamp(), false),
            text("labeller"),
            Field::new("correct", DataType::Boolean, true),
            Field::new("query", DataType::Utf8, true),
            Field::new("query_key", DataType::Utf8, true),
            Field::new("judgments", DataType::Utf8, true),
            Field::new("source_partition", DataType::Int32, false),
            Field::new("source_offset", DataType::Int64, false),
        ]))
    }

    /// Answers queued for labelling by `aion label-queue`.
    pub fn label_queue() -> SchemaRef {
        Arc::new(Schema::new(
            [
                answer(),
                vec![
                    Field::new("retrieval_event_id", DataType::Utf8, true),
                    Field::new("tau", DataType::Float64, false),
                    Field::new("distance", DataType::Float64, false),
                    Field::new("queued_at", timestamp(), false),
                ],
            ]
            .concat(),
        ))
    }

    /// Every counted event once, by pane.
    pub fn window_history() -> SchemaRef {
        Arc::new(Schema::new(vec![
            text("tenant_id"),
            text("kind"),
            Field::new("ts", timestamp(), false),
            Field::new("ndcg", DataType::Float64, true),
            Field::new("fallback", DataType::Boolean, true),
            Field::new("confidence", DataType::Float64, true),
            // The effective watermark on arrival: the event counts in windows ending after it.
            Field::new("arrived_at", timestamp(), true),
        ]))
    }
}

/// A state directory: the tables, the gate's files, the adapters and the local broker's storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn table(&self, table: Table) -> PathBuf {
        self.0.join(table.name())
    }

    /// Trained adapters, one directory per job.
    pub fn adapters(&self) -> PathBuf {
        self.0.join("adapters")
    }

    /// The gate's state: cooldowns and the last window of each tenant.
    pub fn gate_state(&self) -> PathBuf {
        self.0.join("gate").join("state.json")
    }

    /// The index-rebuild rule's state: the documents seen per tenant.
    pub fn index_state(&self) -> PathBuf {
        self.0.join("gate").join("index.json")
    }

    /// The gate's run-time settings (thresholds edited from the panel or the CLI).
    pub fn gate_settings(&self) -> PathBuf {
        self.0.join("gate").join("settings.json")
    }

    /// The local broker's storage.
    pub fn broker(&self) -> PathBuf {
        self.0.join("broker")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These names are on users' disks and in their queries: a rename is a migration.
    #[test]
    fn names_on_disk_stay_what_they_were() {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "shards",
                "entities",
                "labels",
                "label_queue",
                "metrics",
                "window_history"
            ]
        );
        let dir = StateDir::new("/s");
        assert_eq!(dir.gate_state(), Path::new("/s/gate/state.json"));
        assert_eq!(dir.index_state(), Path::new("/s/gate/index.json"));
        assert_eq!(dir.gate_settings(), Path::new("/s/gate/settings.json"));
        assert_eq!(dir.adapters(), Path::new("/s/adapters"));
        assert_eq!(dir.table(Table::Metrics), Path::new("/s/metrics"));
    }

    /// A reader appends the partition columns to the file columns: a name in both would make
    /// every query over the table fail.
    #[test]
    fn no_file_column_is_also_a_partition_column() {
        for table in Table::ALL {
            let Some(schema) = table.schema() else {
                continue;
            };
            for partition in table.partitions() {
                assert!(
                    schema.field_with_name(partition).is_err(),
                    "{}: {partition}",
                    table.name()
                );
            }
        }
    }
}
