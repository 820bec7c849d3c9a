//! The gate pipeline (`pipelines/gate.toml`) and its run-time settings.

use std::path::{Path, PathBuf};

use aion_events::Recipe;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, TopEntities};

/// The pipeline shipped in the repository, embedded so the binary runs without the source tree.
pub const DEFAULT_PIPELINE: &str = include_str!("../../../pipelines/gate.toml");

/// The gate's pipeline definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Topic of `metrics.v1` records.
    pub input_topic: String,
    /// Topic the `train.trigger.v1` records go to.
    pub output_topic: String,
    /// The window kind judged; other kinds are read and ignored.
    pub window: String,
    /// Initial thresholds (run-time changes are persisted separately and win).
    pub settings: Settings,
    /// The training recipe every trigger carries.
    pub recipe: Recipe,
    pub index_rebuild: IndexRebuildConfig,
    /// The worst entities a trigger records.
    #[serde(default)]
    pub top_entities: TopEntities,
}

/// The index-rebuild rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRebuildConfig {
    /// Topic of `retrieval.v1` events whose result documents are counted.
    pub retrieval_topic: String,
    /// Topic the `index.rebuild.v1` requests go to.
    pub output_topic: String,
    /// ΔN: documents never seen before that make a tenant's index worth rebuilding (≥ 1).
    pub new_documents: u64,
}

impl GateConfig {
    pub fn embedded() -> Result<Self> {
        Self::parse(DEFAULT_PIPELINE, "pipelines/gate.toml")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        let invalid = |message: String| Error::Config {
            origin: origin.to_owned(),
            message,
        };
        let config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        config.settings.validate().map_err(invalid)?;
        if config.index_rebuild.new_documents == 0 {
            return Err(invalid(
                "index_rebuild.new_documents must be at least 1".into(),
            ));
        }
        Ok(config)
    }
}

/// Longest cooldown: 30 days.
pub const MAX_COOLDOWN_HOURS: f64 = 720.0;

/// Thresholds the gate reads for every window; changeable while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Fire when the fallback rate is above this, in (0, 1).
    pub tau_fallback: f64,
    /// Fire when the mean nDCG is below this, in (0, 1).
    pub tau_ndcg: f64,
    /// Answers a window needs before its fallback rate counts.
    pub min_answers: u64,
    /// Judged retrieval events a window needs before its nDCG counts.
    pub min_judged: u64,
    /// Quiet period after a trigger, in hours of event time, 0..=[`MAX_COOLDOWN_HOURS`].
    pub cooldown_hours: f64,
    /// Re-arm only after recovering past the thresholds by this margin (0: off).
    pub rearm_margin: f64,
}

impl Settings {
    /// Checks ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        // A threshold of 0 or 1 fires on every window or never: a typo, not a setting.
        let open_unit = |name: &str, v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(format!("{name} must be within (0, 1), got {v}"))
            }
        };
        open_unit("tau_fallback", self.tau_fallback)?;
        open_unit("tau_ndcg", self.tau_ndcg)?;
        if !(0.0..1.0).contains(&self.rearm_margin) {
            return Err(format!(
                "rearm_margin must be within [0, 1), got {}",
                self.rearm_margin
            ));
        }
        // Longer cooldowns overflow date arithmetic long before they mean anything.
        if !(0.0..=MAX_COOLDOWN_HOURS).contains(&self.cooldown_hours) {
            return Err(format!(
                "cooldown_hours must be within 0..={MAX_COOLDOWN_HOURS} (30 days), got {}",
                self.cooldown_hours
            ));
        }
        Ok(())
    }
}

/// Where run-time settings are persisted: a JSON file replaced atomically, read by the gate
/// whenever it changes.
#[derive(Debug, Clone)]
pub struct SettingsStore {
    path: PathBuf,
}

impl SettingsStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted settings, if any were saved.
    pub fn load(&self) -> Result<Option<Settings>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::io(&self.path, e)),
        };
        let settings: Settings = serde_json::from_str(&text).map_err(|e| Error::Config {
            origin: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        settings.validate().map_err(|message| Error::Config {
            origin: self.path.display().to_string(),
            message,
        })?;
        Ok(Some(settings))
    }

    /// Reads the settings (or `initial`), applies `change` and saves the result if it differs,
    /// holding an exclusive lock on `<file>.lock` throughout: two writers (the API, `aion gate
    /// settings`) never lose each other's changes.
    pub fn update(
        &self,
        initial: &Settings,
        change: impl FnOnce(&mut Settings) -> std::result::Result<(), String>,
    ) -> Result<Settings> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| crate::io(dir, e))?;
        let lock_path = self.path.with_extension("json.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| crate::io(&lock_path, e))?;
        lock.lock().map_err(|e| crate::io(&lock_path, e))?;
        let current = self.load()?.unwrap_or_else(|| initial.clone());
        let mut next = current.clone();
        change(&mut next).map_err(|message| Error::Config {
            origin: "settings".into(),
            message,
        })?;
        if next != current {
            self.save(&next)?;
        }
        Ok(next)
    }

    /// Validates and persists `settings` (write to a temporary file, fsync, rename).
    pub fn save(&self, settings: &Settings) -> Result<()> {
        settings.validate().map_err(|message| Error::Config {
            origin: "settings".into(),
            message,
        })?;
        Ok(aion_events::durable::replace_bytes(
            &self.path,
            &serde_json::to_vec_pretty(settings)?,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_pipeline_has_the_seed_defaults() {
        let c = GateConfig::embedded().unwrap();
        assert_eq!(c.settings.tau_fallback, 0.18);
        assert_eq!(c.settings.tau_ndcg, 0.82);
        assert_eq!(c.settings.cooldown_hours, 6.0);
        assert_eq!(c.recipe.lora_r, 16);
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let mut s = GateConfig::embedded().unwrap().settings;
        s.tau_ndcg = 1.5;
        assert!(s.validate().unwrap_err().contains("tau_ndcg"));
        s.tau_ndcg = 0.8;
        s.cooldown_hours = -1.0;
        assert!(s.validate().unwrap_err().contains("cooldown_hours"));
    }

    #[test]
    fn thresholds_are_open_and_the_cooldown_bounded() {
        let base = GateConfig::embedded().unwrap().settings;
        for (change, field) in [
            (
                (|s: &mut Settings| s.tau_fallback = 0.0) as fn(&mut Settings),
                "tau_fallback",
            ),
            (|s| s.tau_ndcg = 1.0, "tau_ndcg"),
            (|s| s.tau_ndcg = f64::NAN, "tau_ndcg"),
            (
                |s| s.cooldown_hours = MAX_COOLDOWN_HOURS + 1.0,
                "cooldown_hours",
            ),
            (|s| s.cooldown_hours = 1e300, "cooldown_hours"),
            (|s| s.rearm_margin = 1.0, "rearm_margin"),
        ] {
            let mut s = base.clone();
            change(&mut s);
            assert!(s.validate().unwrap_err().contains(field), "{field}");
        }
        let mut s = base;
        s.cooldown_hours = MAX_COOLDOWN_HOURS;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn concurrent_updates_lose_nothing_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate/settings.json");
        let initial = GateConfig::embedded().unwrap().settings;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, initial) = (SettingsStore::new(&path), initial.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        store
                            .update(&initial, |s| {
                                s.min_answers += 1;
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let saved = SettingsStore::new(&path).load().unwrap().unwrap();
        assert_eq!(saved.min_answers, initial.min_answers + 160);
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn settings_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = SettingsStore::new(dir.path().join("gate/settings.json"));
        assert_eq!(store.load().unwrap(), None);
        let mut s = GateConfig::embedded().unwrap().settings;
        s.tau_fallback = 0.25;
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s.clone()));
        s.tau_fallback = 2.0;
        assert!(store.save(&s).is_err());
    }
}
