//! The decision: per tenant, does this window's quality call for training?
//!
//! A metric counts only with enough samples; a breach is strict (exactly at τ is no breach).
//! After firing, a tenant stays quiet for the cooldown (event time, its own clock: tenants do not
//! share time) and, with hysteresis on, until its metrics recovered past the thresholds by the
//! margin. Windows at or before the last one seen for a tenant are ignored, so a replay neither
//! re-fires nor forgets.

use std::collections::BTreeMap;
use std::path::Path;

use aion_events::{TriggerReason, WindowMetrics};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{Result, Settings};

/// What the gate remembers of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantState {
    /// End of the last window evaluated.
    pub last_end: Option<DateTime<Utc>>,
    /// Window end at which the gate last fired.
    pub last_fired: Option<DateTime<Utc>>,
    /// False while waiting to recover past the hysteresis margin.
    pub armed: bool,
}

impl Default for TenantState {
    fn default() -> Self {
        Self {
            last_end: None,
            last_fired: None,
            armed: true,
        }
    }
}

/// The gate's verdict on one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Another window kind, or a window already evaluated.
    Ignored,
    /// Evaluated, no trigger; says why.
    Quiet(String),
    Fire(TriggerReason),
}

/// The state of every tenant, persisted as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub tenants: BTreeMap<String, TenantState>,
}

impl Gate {
    pub fn evaluate(&mut self, window: &str, m: &WindowMetrics, s: &Settings) -> Verdict {
        if m.window != window {
            return Verdict::Ignored;
        }
        let state = self.tenants.entry(m.tenant_id.clone()).or_default();
        if state.last_end.is_some_and(|last| m.window_end <= last) {
            return Verdict::Ignored;
        }
        state.last_end = Some(m.window_end);
        let fallback = m.fallback_rate.filter(|_| m.answers >= s.min_answers);
        let ndcg = m.ndcg_mean.filter(|_| m.judged_events >= s.min_judged);
        let fallback_breach = fallback.is_some_and(|r| r > s.tau_fallback);
        let ndcg_breach = ndcg.is_some_and(|n| n < s.tau_ndcg);
        if !state.armed {
            let recovered = fallback.is_none_or(|r| r <= s.tau_fallback - s.rearm_margin)
                && ndcg.is_none_or(|n| n >= s.tau_ndcg + s.rearm_margin);
            if !recovered {
                return Verdict::Quiet(
                    "not re-armed: metrics have not recovered past the margin".into(),
                );
            }
            state.armed = true;
        }
        let reason = match (fallback_breach, ndcg_breach) {
            (true, true) => TriggerReason::FallbackRateAndNdcg,
            (true, false) => TriggerReason::FallbackRate,
            (false, true) => TriggerReason::Ndcg,
            (false, false) => {
                return Verdict::Quiet(if fallback.is_none() && ndcg.is_none() {
                    format!(
                        "below the minimum samples ({} answers < {} and {} judged < {})",
                        m.answers, s.min_answers, m.judged_events, s.min_judged
                    )
                } else {
                    "within thresholds".into()
                });
            }
        };
        let cooldown = Duration::milliseconds((s.cooldown_hours * 3_600_000.0) as i64);
        if let Some(until) = state.last_fired.map(|f| f + cooldown) {
            if m.window_end < until {
                return Verdict::Quiet(format!("cooling down until {until}"));
            }
        }
        state.last_fired = Some(m.window_end);
        state.armed = s.rearm_margin == 0.0;
        Verdict::Fire(reason)
    }

    /// Loads the state saved by [`Gate::save`], or a fresh gate.
    pub fn load(path: &Path) -> Result<Self> {
        crate::load_json(path)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::save_json(path, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        crate::GateConfig::embedded().unwrap().settings
    }

    fn window(tenant: &str, hour: i64, fallback_rate: f64, ndcg: f64) -> WindowMetrics {
        let t0: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().unwrap();
        WindowMetrics {
            tenant_id: tenant.into(),
            window: "hopping_24h".into(),
            window_start: t0 + Duration::hours(hour - 24),
            window_end: t0 + Duration::hours(hour),
            retrieval_events: 200,
            judged_events: 100,
            ndcg_mean: Some(ndcg),
            ndcg_p50: Some(ndcg),
            ndcg_p10: Some(ndcg),
            answers: 100,
            fallbacks: (fallback_rate * 100.0) as u64,
            fallback_rate: Some(fallback_rate),
            confidence_mean: Some(0.8),
        }
    }

    fn fire(g: &mut Gate, m: &WindowMetrics, s: &Settings) -> bool {
        matches!(g.evaluate("hopping_24h", m, s), Verdict::Fire(_))
    }

    #[test]
    fn exactly_at_the_thresholds_is_no_breach() {
        let (mut g, s) = (Gate::default(), settings());
        assert!(!fire(&mut g, &window("a", 1, 0.18, 0.82), &s));
        assert_eq!(
            g.evaluate("hopping_24h", &window("a", 2, 0.1801, 0.9), &s),
            Verdict::Fire(TriggerReason::FallbackRate)
        );
        assert_eq!(
            g.evaluate("hopping_24h", &window("b", 2, 0.1, 0.8199), &s),
            Verdict::Fire(TriggerReason::Ndcg)
        );
        assert_eq!(
            g.evaluate("hopping_24h", &window("c", 2, 0.3, 0.5), &s),
            Verdict::Fire(TriggerReason::FallbackRateAndNdcg)
        );
    }

    #[test]
    fn one_trigger_per_cooldown_while_degraded() {
        let (mut g, s) = (Gate::default(), settings());
        let fired: Vec<i64> = (1..=20)
            .filter(|h| fire(&mut g, &window("a", *h, 0.4, 0.5), &s))
            .collect();
        assert_eq!(fired, vec![1, 7, 13, 19], "6 h cooldown in event time");
    }

    #[test]
    fn windows_under_the_minimum_samples_never_fire() {
        let (mut g, s) = (Gate::default(), settings());
        let mut m = window("a", 1, 0.9, 0.1);
        m.answers = s.min_answers - 1;
        m.judged_events = s.min_judged - 1;
        assert!(
            matches!(g.evaluate("hopping_24h", &m, &s), Verdict::Quiet(r) if r.contains("minimum"))
        );
        // Enough answers alone is enough for the fallback rule.
        m.window_end += Duration::hours(1);
        m.answers = s.min_answers;
        assert_eq!(
            g.evaluate("hopping_24h", &m, &s),
            Verdict::Fire(TriggerReason::FallbackRate)
        );
    }

    #[test]
    fn hysteresis_rearms_only_after_recovering_past_the_margin() {
        let mut s = settings();
        s.rearm_margin = 0.05;
        s.cooldown_hours = 0.0;
        let mut g = Gate::default();
        assert!(fire(&mut g, &window("a", 1, 0.3, 0.9), &s));
        assert!(!fire(&mut g, &window("a", 2, 0.3, 0.9), &s), "not re-armed");
        assert!(
            !fire(&mut g, &window("a", 3, 0.15, 0.9), &s),
            "0.15 > 0.18 − 0.05: still not"
        );
        assert!(
            !fire(&mut g, &window("a", 4, 0.12, 0.9), &s),
            "recovered: re-armed, healthy"
        );
        assert!(fire(&mut g, &window("a", 5, 0.3, 0.9), &s));
    }

    #[test]
    fn tenants_keep_their_own_clocks() {
        let (mut g, s) = (Gate::default(), settings());
        // Tenant b's event time runs a day ahead; it must not cool a down or vice versa.
        assert!(fire(&mut g, &window("b", 30, 0.4, 0.9), &s));
        assert!(fire(&mut g, &window("a", 1, 0.4, 0.9), &s));
        assert!(!fire(&mut g, &window("a", 2, 0.4, 0.9), &s));
        assert!(fire(&mut g, &window("b", 36, 0.4, 0.9), &s));
    }

    #[test]
    fn replayed_or_other_windows_are_ignored_and_state_survives_a_restart() {
        let (mut g, s) = (Gate::default(), settings());
        assert!(fire(&mut g, &window("a", 5, 0.4, 0.9), &s));
        let dir = tempfile::tempdir().unwrap();
        let path = aion_events::layout::StateDir::new(dir.path()).gate_state();
        g.save(&path).unwrap();
        let mut restarted = Gate::load(&path).unwrap();
        assert_eq!(restarted, g);
        assert_eq!(
            restarted.evaluate("hopping_24h", &window("a", 5, 0.4, 0.9), &s),
            Verdict::Ignored,
            "a replayed window does not re-fire"
        );
        assert!(
            !fire(&mut restarted, &window("a", 8, 0.4, 0.9), &s),
            "cooldown remembered"
        );
        let mut hourly = window("a", 20, 0.4, 0.9);
        hourly.window = "tumbling_1h".into();
        assert_eq!(
            restarted.evaluate("hopping_24h", &hourly, &s),
            Verdict::Ignored
        );
    }
}
