//! The active-learning queue: the answers whose confidence is closest to the fallback threshold
//! are the ones the model is least sure it should have served (or handed off), so a human label
//! there says the most about where the threshold belongs.

use std::collections::HashSet;

use crate::{check_unit, Error, Result};

/// The at most `limit` items closest to `tau` by |confidence − τ|, ties by event id (ascending),
/// skipping ids in `excluded` and repeated ids (the first occurrence is kept). `key` gives an
/// item's event id and confidence.
pub fn select_closest<T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> (&str, f64),
    tau: f64,
    limit: usize,
    excluded: &HashSet<String>,
) -> Result<Vec<T>> {
    check_unit("tau", tau)?;
    if limit == 0 {
        return Err(Error::Argument {
            name: "limit",
            expected: "at least 1",
            got: "0".into(),
        });
    }
    let mut seen = HashSet::new();
    let mut candidates: Vec<(f64, T)> = items
        .into_iter()
        .filter(|item| {
            let (id, c) = key(item);
            c.is_finite() && !excluded.contains(id) && seen.insert(id.to_owned())
        })
        .map(|item| ((key(&item).1 - tau).abs(), item))
        .collect();
    candidates.sort_by(|(da, a), (db, b)| da.total_cmp(db).then_with(|| key(a).0.cmp(key(b).0)));
    candidates.truncate(limit);
    Ok(candidates.into_iter().map(|(_, item)| item).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(items: &[(&str, f64)], tau: f64, limit: usize, excluded: &[&str]) -> Vec<String> {
        let excluded: HashSet<String> = excluded.iter().map(|s| s.to_string()).collect();
        select_closest(
            items.iter().copied(),
            |&(id, c)| (id, c),
            tau,
            limit,
            &excluded,
        )
        .unwrap()
        .into_iter()
        .map(|(id, _)| id.to_owned())
        .collect()
    }

    // τ = 0.5: distances a 0.30, b 0.05, c 0.05, d 0.10, e 0.45, f 0.0.
    const HISTORY: &[(&str, f64)] = &[
        ("a", 0.2),
        ("c", 0.55),
        ("b", 0.45),
        ("d", 0.6),
        ("e", 0.95),
        ("f", 0.5),
    ];

    #[test]
    fn closest_first_ties_by_event_id() {
        assert_eq!(pick(HISTORY, 0.5, 3, &[]), ["f", "b", "c"]);
        assert_eq!(pick(HISTORY, 0.5, 10, &[]), ["f", "b", "c", "d", "a", "e"]);
        // τ = 0.0: the lowest confidences.
        assert_eq!(pick(HISTORY, 0.0, 2, &[]), ["a", "b"]);
    }

    #[test]
    fn queued_or_labelled_ids_and_duplicates_are_skipped() {
        assert_eq!(pick(HISTORY, 0.5, 3, &["f", "c"]), ["b", "d", "a"]);
        let dup = [("x", 0.5), ("x", 0.9), ("y", 0.4)];
        assert_eq!(pick(&dup, 0.5, 5, &[]), ["x", "y"]);
    }

    #[test]
    fn tau_outside_the_unit_interval_and_zero_limit_are_rejected() {
        let none = HashSet::new();
        for tau in [-0.1, 1.5, f64::NAN] {
            assert!(
                select_closest(HISTORY.iter().copied(), |&(i, c)| (i, c), tau, 1, &none).is_err()
            );
        }
        let err =
            select_closest(HISTORY.iter().copied(), |&(i, c)| (i, c), 0.5, 0, &none).unwrap_err();
        assert_eq!(err.to_string(), "limit must be at least 1, got 0");
    }
}
