//! What a state directory holds, named once: the Parquet tables (with how each is partitioned)
//! and the stages' state files. Writers, `aion sql`, the API and the tests take paths from here.

use std::path::{Path, PathBuf};

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
}
