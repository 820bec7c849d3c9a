//! From per-token predictions to entity spans, as transformers' `aggregation_strategy="simple"`:
//! consecutive tokens of one entity type form one entity unless a `B-` tag starts a new one; its
//! score is the mean of its tokens' scores; `O` tokens end entities.

use serde::Serialize;

/// One token's best label and its probability, with the character span it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPrediction {
    pub label: String,
    pub score: f32,
    pub start: usize,
    pub end: usize,
}

/// An entity found in a text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// The type without its B-/I- prefix, e.g. `GIVEN_NAME`.
    pub label: String,
    /// The text covered, `text[start..end]`.
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

fn split(label: &str) -> (bool, &str) {
    match label.split_once('-') {
        Some(("B", t)) => (true, t),
        Some(("I", t)) => (false, t),
        _ => (false, label),
    }
}

/// Groups token predictions of `text` into entities.
pub fn group_simple(text: &str, tokens: &[TokenPrediction]) -> Vec<Entity> {
    let mut out: Vec<(Entity, usize)> = Vec::new();
    let mut open = false;
    for t in tokens {
        if t.label == "O" {
            open = false;
            continue;
        }
        let (begin, kind) = split(&t.label);
        match out.last_mut() {
            Some((e, n)) if open && !begin && e.label == kind => {
                e.end = t.end;
                e.score += t.score;
                *n += 1;
            }
            _ => out.push((
                Entity {
                    label: kind.to_owned(),
                    text: String::new(),
                    start: t.start,
                    end: t.end,
                    score: t.score,
                },
                1,
            )),
        }
        open = true;
    }
    out.into_iter()
        .map(|(mut e, n)| {
            e.score /= n as f32;
            e.text = text.get(e.start..e.end).unwrap_or_default().to_owned();
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(label: &str, score: f32, start: usize, end: usize) -> TokenPrediction {
        TokenPrediction {
            label: label.into(),
            score,
            start,
            end,
        }
    }

    #[test]
    fn groups_like_the_simple_strategy() {
        let text = "ana maria souza lives in recife";
        let tokens = [
            t("B-GIVEN_NAME", 0.9, 0, 3),
            t("I-GIVEN_NAME", 0.7, 4, 9),
            t("B-SURNAME", 0.8, 10, 15),
            t("O", 0.99, 16, 21),
            t("O", 0.99, 22, 24),
            t("I-CITY", 0.6, 25, 28),
            t("I-CITY", 0.8, 28, 31),
        ];
        let e = group_simple(text, &tokens);
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.label.as_str(), e.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("GIVEN_NAME", "ana maria"),
                ("SURNAME", "souza"),
                ("CITY", "recife")
            ]
        );
        assert!((e[0].score - 0.8).abs() < 1e-6);
        assert!((e[2].score - 0.7).abs() < 1e-6);
    }
}
