//! The budget-aware fallback threshold. An answer with confidence C is served by the local model
//! when C ≥ τ and handed to the external LLM when C < τ. With per-answer costs c_fallback (an
//! external call), c_local (a local answer) and c_error (a wrong local answer reaching a user):
//!
//! Cost(τ) = p(C < τ)·c_fallback + p(C ≥ τ)·(c_local + p(wrong | C ≥ τ)·c_error)
//!
//! p(C < τ) and p(C ≥ τ) are fractions of the answer history. p(wrong | C ≥ τ) is estimated from
//! the *labelled* answers only: wrong labelled answers with C ≥ τ over labelled answers with
//! C ≥ τ (a wrong answer is one labelled `correct: false`). Where no labelled answer has C ≥ τ
//! (while some answers do) the term is unknown and so is the cost; where no answer has C ≥ τ it
//! is 0. Without any label (or without c_error) the error term is left out entirely
//! ([`ErrorTerm`]): the cost is then only the spend on fallbacks and local answers, which always
//! favours the cheaper side — a threshold cannot be tuned for quality without labels.

use serde::Serialize;

use crate::{check_unit, Error, Result};

/// One answer of the history: its confidence and, if a human labelled it, whether it was right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub confidence: f64,
    pub correct: Option<bool>,
}

/// The prices of the three outcomes, in any one unit (money, latency budget, …).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Cost of one answer handed to the external fallback LLM.
    pub c_fallback: f64,
    /// Cost of one answer served by the local model.
    pub c_local: f64,
    /// Extra cost of a wrong local answer; `None` leaves the error term out.
    pub c_error: Option<f64>,
}

/// Whether the c_error term is part of the costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorTerm {
    /// Estimated from the labelled answers.
    Estimated,
    /// No c_error was given.
    NotRequested,
    /// c_error was given but no answer of the history is labelled: left out.
    NoLabels,
}

/// Cost(τ) and its parts at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostPoint {
    pub tau: f64,
    pub answers: u64,
    /// p(C < τ): the fallback share.
    pub p_fallback: f64,
    /// p(C ≥ τ): the local share.
    pub p_local: f64,
    /// Labelled answers with C ≥ τ, and how many of them are wrong.
    pub labelled_local: u64,
    pub wrong_local: u64,
    /// p(wrong | C ≥ τ) from the labels, when there are labelled answers with C ≥ τ.
    pub p_wrong_local: Option<f64>,
    /// Cost(τ); `None` when the error term is estimated but unknown at this τ.
    pub cost: Option<f64>,
}

/// A sweep of τ over the grid i / (steps − 1), i = 0..steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub points: Vec<CostPoint>,
    pub error_term: ErrorTerm,
    /// Labelled answers in the history.
    pub labelled: u64,
}

impl CostModel {
    fn check(&self) -> Result<()> {
        let costs = [
            ("c_fallback", Some(self.c_fallback)),
            ("c_local", Some(self.c_local)),
            ("c_error", self.c_error),
        ];
        for (name, c) in costs {
            if let Some(c) = c {
                if !(c.is_finite() && c >= 0.0) {
                    return Err(Error::Argument {
                        name,
                        expected: "a finite number ≥ 0",
                        got: c.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Which error term a history with `labelled` labelled answers supports.
    pub fn error_term(&self, labelled: u64) -> ErrorTerm {
        match (self.c_error, labelled) {
            (None, _) => ErrorTerm::NotRequested,
            (Some(_), 0) => ErrorTerm::NoLabels,
            (Some(_), _) => ErrorTerm::Estimated,
        }
    }
}

/// Cost(τ) of `history` at one τ, with the error term `term` (see [`CostModel::error_term`]).
pub fn cost_at(history: &[Answer], model: &CostModel, tau: f64, term: ErrorTerm) -> CostPoint {
    let n = history.len() as u64;
    let local: Vec<&Answer> = history.iter().filter(|a| a.confidence >= tau).collect();
    let labelled_local = local.iter().filter(|a| a.correct.is_some()).count() as u64;
    let wrong_local = local.iter().filter(|a| a.correct == Some(false)).count() as u64;
    let share = |k: u64| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let p_local = share(local.len() as u64);
    let p_fallback = share(n - local.len() as u64);
    let p_wrong_local = (labelled_local > 0).then(|| wrong_local as f64 / labelled_local as f64);
    let spend = p_fallback * model.c_fallback + p_local * model.c_local;
    let cost = match (term, model.c_error) {
        (ErrorTerm::Estimated, Some(c_error)) => {
            if local.is_empty() {
                Some(spend)
            } else {
                p_wrong_local.map(|p| spend + p_local * p * c_error)
            }
        }
        _ => Some(spend),
    };
    CostPoint {
        tau,
        answers: n,
        p_fallback,
        p_local,
        labelled_local,
        wrong_local,
        p_wrong_local,
        cost,
    }
}

fn grid(steps: usize) -> Result<impl Iterator<Item = f64>> {
    if steps < 2 {
        return Err(Error::Argument {
            name: "steps",
            expected: "at least 2",
            got: steps.to_string(),
        });
    }
    let last = (steps - 1) as f64;
    Ok((0..steps).map(move |i| i as f64 / last))
}

/// Cost(τ) for τ = i / (steps − 1), i = 0..steps (steps = 101: τ = 0.00, 0.01, …, 1.00).
pub fn sweep(history: &[Answer], model: &CostModel, steps: usize) -> Result<Sweep> {
    model.check()?;
    let labelled = history.iter().filter(|a| a.correct.is_some()).count() as u64;
    let error_term = model.error_term(labelled);
    let points = grid(steps)?
        .map(|tau| cost_at(history, model, tau, error_term))
        .collect();
    Ok(Sweep {
        points,
        error_term,
        labelled,
    })
}

/// The point of least known cost; the smallest τ among equal costs (fewer fallbacks).
pub fn argmin(points: &[CostPoint]) -> Option<&CostPoint> {
    points
        .iter()
        .filter_map(|p| p.cost.map(|c| (c, p)))
        .min_by(|(a, pa), (b, pb)| a.total_cmp(b).then(pa.tau.total_cmp(&pb.tau)))
        .map(|(_, p)| p)
}

/// The threshold the assistant applied, read off its recorded decisions: the grid τ that agrees
/// with the most `(confidence, fell back)` pairs on "fell back ⇔ C < τ" (the smallest such τ),
/// with the fraction of pairs it agrees with. `None` for an empty history.
pub fn infer_threshold(decisions: &[(f64, bool)], steps: usize) -> Result<Option<(f64, f64)>> {
    if decisions.is_empty() {
        return Ok(None);
    }
    let mut best: Option<(f64, usize)> = None;
    for tau in grid(steps)? {
        let agree = decisions
            .iter()
            .filter(|&&(c, fallback)| (c < tau) == fallback)
            .count();
        if best.is_none_or(|(_, b)| agree > b) {
            best = Some((tau, agree));
        }
    }
    Ok(best.map(|(tau, agree)| (tau, agree as f64 / decisions.len() as f64)))
}

/// Checks a threshold given by the operator.
pub fn check_tau(tau: f64) -> Result<()> {
    check_unit("tau", tau)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(confidence: f64, correct: Option<bool>) -> Answer {
        Answer {
            confidence,
            correct,
        }
    }

    /// Ten answers; seven labelled (three wrong: C = 0.2, 0.4, 0.6).
    fn history() -> Vec<Answer> {
        vec![
            a(0.1, None),
            a(0.2, Some(false)),
            a(0.3, None),
            a(0.4, Some(false)),
            a(0.5, Some(true)),
            a(0.6, Some(false)),
            a(0.7, Some(true)),
            a(0.8, Some(true)),
            a(0.9, None),
            a(0.95, Some(true)),
        ]
    }

    const MODEL: CostModel = CostModel {
        c_fallback: 1.0,
        c_local: 0.1,
        c_error: Some(2.0),
    };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_costs_and_argmin_with_labels() {
        let s = sweep(&history(), &MODEL, 11).unwrap();
        assert_eq!(s.error_term, ErrorTerm::Estimated);
        assert_eq!(s.labelled, 7);
        // Cost(τ) = p_fb·1 + p_loc·(0.1 + p_wrong·2), by hand:
        let expected = [
            (0.0, 0.0, 3.0 / 7.0, 0.1 + 6.0 / 7.0), // 10 local, 3/7 wrong
            (0.1, 0.0, 3.0 / 7.0, 0.1 + 6.0 / 7.0), // C = 0.1 is not < 0.1
            (0.2, 0.1, 3.0 / 7.0, 0.1 + 0.9 * (0.1 + 6.0 / 7.0)), // 0.961428…
            (0.3, 0.2, 1.0 / 3.0, 0.2 + 0.8 * (0.1 + 2.0 / 3.0)), // 0.813333…
            (0.4, 0.3, 1.0 / 3.0, 0.3 + 0.7 * (0.1 + 2.0 / 3.0)), // 0.836666…
            (0.5, 0.4, 0.2, 0.4 + 0.6 * (0.1 + 0.4)), // 0.7
            (0.6, 0.5, 0.25, 0.5 + 0.5 * (0.1 + 0.5)), // 0.8
            (0.7, 0.6, 0.0, 0.64),
            (0.8, 0.7, 0.0, 0.73),
            (0.9, 0.8, 0.0, 0.82),
        ];
        for (p, &(tau, p_fb, p_wrong, cost)) in s.points.iter().zip(&expected) {
            assert!(close(p.tau, tau), "{p:?}");
            assert!(close(p.p_fallback, p_fb), "{p:?}");
            assert!(close(p.p_local, 1.0 - p_fb), "{p:?}");
            assert!(close(p.p_wrong_local.unwrap(), p_wrong), "{p:?}");
            assert!(close(p.cost.unwrap(), cost), "τ {tau}: {p:?} vs {cost}");
        }
        // τ = 1: everything falls back, no local answer to be wrong.
        let last = s.points[10];
        assert_eq!((last.p_fallback, last.p_wrong_local), (1.0, None));
        assert!(close(last.cost.unwrap(), 1.0));
        let best = argmin(&s.points).unwrap();
        assert!(
            close(best.tau, 0.7) && close(best.cost.unwrap(), 0.64),
            "{best:?}"
        );
        // The current τ off the grid: 0.65 splits like 0.7 (C = 0.6 falls back, 0.7 does not).
        let at = cost_at(&history(), &MODEL, 0.65, s.error_term);
        assert!(close(at.cost.unwrap(), 0.64));
    }

    #[test]
    fn without_c_error_only_the_spend_counts_and_the_cheaper_side_wins() {
        let model = CostModel {
            c_error: None,
            ..MODEL
        };
        let s = sweep(&history(), &model, 11).unwrap();
        assert_eq!(s.error_term, ErrorTerm::NotRequested);
        assert!(close(s.points[5].cost.unwrap(), 0.4 + 0.6 * 0.1));
        // τ = 0 and τ = 0.1 both cost 0.1 (nothing falls back): the smaller τ is reported.
        let best = argmin(&s.points).unwrap();
        assert_eq!(best.tau, 0.0);
        assert!(close(best.cost.unwrap(), 0.1));
    }

    #[test]
    fn without_labels_the_error_term_is_left_out_and_said_so() {
        let unlabelled: Vec<Answer> = history()
            .into_iter()
            .map(|x| a(x.confidence, None))
            .collect();
        let s = sweep(&unlabelled, &MODEL, 11).unwrap();
        assert_eq!(s.error_term, ErrorTerm::NoLabels);
        assert_eq!(s.labelled, 0);
        assert!(s.points.iter().all(|p| p.p_wrong_local.is_none()));
        assert!(close(s.points[3].cost.unwrap(), 0.2 + 0.8 * 0.1));
    }

    #[test]
    fn cost_is_unknown_where_no_labelled_answer_is_served_locally() {
        let h = [a(0.2, Some(false)), a(0.8, None)];
        let model = CostModel {
            c_fallback: 1.0,
            c_local: 0.1,
            c_error: Some(1.0),
        };
        let s = sweep(&h, &model, 3).unwrap();
        let costs: Vec<Option<f64>> = s.points.iter().map(|p| p.cost).collect();
        // τ = 0: both local, the labelled one wrong: 0.1 + 1·1; τ = 0.5: the local answer is
        // unlabelled; τ = 1: all fall back.
        assert!(close(costs[0].unwrap(), 1.1));
        assert_eq!(costs[1], None);
        assert!(close(costs[2].unwrap(), 1.0));
        assert_eq!(argmin(&s.points).unwrap().tau, 1.0);
    }

    #[test]
    fn the_applied_threshold_is_read_off_the_decisions() {
        let d = [
            (0.2, true),
            (0.45, true),
            (0.5, false),
            (0.7, false),
            (0.48, false),
        ];
        // τ in (0.45, 0.48] agrees with all five; 0.46 is the smallest grid point there.
        let (tau, agree) = infer_threshold(&d, 101).unwrap().unwrap();
        assert!(close(tau, 0.46) && agree == 1.0, "{tau} {agree}");
        // A decision no threshold explains lowers the agreement.
        let (tau, agree) = infer_threshold(&[(0.9, true), (0.1, false)], 11)
            .unwrap()
            .unwrap();
        assert_eq!((tau, agree), (0.0, 0.5));
        assert_eq!(infer_threshold(&[], 11).unwrap(), None);
    }

    #[test]
    fn bad_arguments_are_rejected() {
        assert!(sweep(&history(), &MODEL, 1).is_err());
        let negative = CostModel {
            c_local: -1.0,
            ..MODEL
        };
        assert!(sweep(&history(), &negative, 11).is_err());
        assert!(check_tau(1.01).is_err() && check_tau(1.0).is_ok());
    }
}
