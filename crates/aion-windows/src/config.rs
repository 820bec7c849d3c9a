//! The windows pipeline definition (`pipelines/windows.toml` + its SQL file).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use aion_events::ndcg::Gain;

use crate::{Error, Result};

/// The pipeline shipped in the repository, embedded so the binary runs without the source tree.
pub const DEFAULT_PIPELINE: &str = include_str!("../../../pipelines/windows.toml");
/// Its aggregate SQL.
pub const DEFAULT_SQL: &str = include_str!("../../../pipelines/windows.sql");
/// The view that rebuilds the aggregate's input from the `window_history` table.
pub const WINDOW_EVENTS_VIEW: &str = include_str!("../../../pipelines/window_events.sql");

/// One windows pipeline: what it reads, how it scores, which windows it closes, what SQL
/// aggregates them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsConfig {
    /// Topic of `retrieval.v1` events.
    pub retrieval_topic: String,
    /// Topic of `answer.v1` events.
    pub answer_topic: String,
    /// Topic the window results are published to (`metrics.v1` records).
    pub output_topic: String,
    /// Path of the aggregate SQL, relative to the pipeline file.
    pub sql: String,
    pub ndcg: NdcgSection,
    pub watermark: WatermarkSection,
    /// The window kinds, at least one.
    #[serde(rename = "window")]
    pub windows: Vec<WindowSpec>,
    /// The SQL text, read from `sql` when the pipeline is loaded.
    #[serde(skip)]
    pub sql_text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NdcgSection {
    /// Cut-off rank k of nDCG@k.
    pub k: usize,
    pub gain: Gain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSection {
    /// How far behind the largest event time seen an event may arrive and still count.
    #[serde(deserialize_with = "duration")]
    pub allowed_lateness: Duration,
    /// After this long without records a caught-up partition (nothing left to read) no longer
    /// holds the watermark back. A partition with unread records always holds it.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Events stamped further than this ahead of the stage's clock are dead-lettered.
    #[serde(default = "default_max_ahead", deserialize_with = "duration")]
    pub max_ahead: Duration,
}

fn default_max_ahead() -> Duration {
    Duration::from_secs(3600)
}

/// A tumbling (no `slide`) or hopping window kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Name in results and keys, e.g. `tumbling_1h`.
    pub name: String,
    #[serde(deserialize_with = "duration")]
    pub size: Duration,
    /// Distance between window starts; equal to `size` (tumbling) when absent.
    #[serde(default, deserialize_with = "optional_duration")]
    pub slide: Option<Duration>,
}

impl WindowSpec {
    pub fn slide(&self) -> Duration {
        self.slide.unwrap_or(self.size)
    }
}

impl WindowsConfig {
    /// The embedded default pipeline.
    pub fn embedded() -> Result<Self> {
        Self::parse(DEFAULT_PIPELINE, "pipelines/windows.toml", |_| {
            Ok(DEFAULT_SQL.to_owned())
        })
    }

    /// Loads a pipeline file and the SQL file it names.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Pipeline {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), |sql| {
            let sql_path = dir.join(sql);
            std::fs::read_to_string(&sql_path)
                .map_err(|e| format!("reading SQL {}: {e}", sql_path.display()))
        })
    }

    fn parse(
        text: &str,
        origin: &str,
        read_sql: impl FnOnce(&str) -> Result<String, String>,
    ) -> Result<Self> {
        let invalid = |message: String| Error::Pipeline {
            path: origin.to_owned(),
            message,
        };
        let mut config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        config.sql_text = read_sql(&config.sql).map_err(invalid)?;
        config.check().map_err(invalid)?;
        Ok(config)
    }

    /// Checks what the types cannot say.
    fn check(&self) -> Result<(), String> {
        if self.ndcg.k == 0 {
            return Err("ndcg.k must be at least 1".into());
        }
        if self.windows.is_empty() {
            return Err("at least one [[window]] is required".into());
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.windows {
            if !names.insert(&w.name) {
                return Err(format!("window name {:?} is used twice", w.name));
            }
            if w.name.is_empty() || w.name.contains('/') {
                return Err(format!(
                    "window name {:?} must be non-empty without '/'",
                    w.name
                ));
            }
            if w.size.is_zero() || w.slide().is_zero() {
                return Err(format!(
                    "window {}: size and slide must be positive",
                    w.name
                ));
            }
            if w.slide() > w.size {
                return Err(format!(
                    "window {}: a slide longer than the size would skip events",
                    w.name
                ));
            }
            let pane = self.pane().as_secs();
            if pane == 0 || w.size.as_secs() % pane != 0 || w.slide().as_secs() % pane != 0 {
                return Err(format!(
                    "window {}: sizes and slides must be whole seconds",
                    w.name
                ));
            }
        }
        Ok(())
    }

    /// The greatest common divisor of every size and slide: each event is stored once, in the
    /// pane of this length that holds it, and windows are unions of panes.
    pub fn pane(&self) -> Duration {
        let gcd = |mut a: u64, mut b: u64| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        let secs = self
            .windows
            .iter()
            .flat_map(|w| [w.size.as_secs(), w.slide().as_secs()])
            .fold(0, gcd);
        Duration::from_secs(secs)
    }
}

/// `90s`, `10m`, `1h`, `1d`: an integer and a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: missing unit (s, m, h or d)"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a number before the unit"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(n * unit_secs))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_pipeline_is_valid_and_has_the_issue_windows() {
        let c = WindowsConfig::embedded().unwrap();
        let names: Vec<&str> = c.windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["tumbling_1h", "tumbling_1d", "hopping_24h"]);
        assert_eq!(c.pane(), Duration::from_secs(3600));
        assert_eq!(c.windows[2].slide(), Duration::from_secs(3600));
        assert_eq!(c.ndcg.k, 10);
        assert_eq!(c.watermark.max_ahead, Duration::from_secs(3600));
        assert!(c.sql_text.contains("window_events"));
    }

    #[test]
    fn bad_pipelines_are_refused_with_the_reason() {
        let base = DEFAULT_PIPELINE;
        let cases = [
            (base.replace("k = 10", "k = 0"), "ndcg.k"),
            (
                base.replace("size = \"1d\"", "size = \"1x\""),
                "unknown unit",
            ),
            (
                base.replace("slide = \"1h\"", "slide = \"48h\""),
                "skip events",
            ),
            (base.replace("hopping_24h", "tumbling_1h"), "used twice"),
            (format!("{base}\nbogus = 1\n"), "unknown field"),
        ];
        for (text, expected) in cases {
            let err = WindowsConfig::parse(&text, "t.toml", |_| Ok(String::new())).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("h").is_err());
    }
}
