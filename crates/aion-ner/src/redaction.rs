//! What the shard stage redacts: recall over precision. A name the model labels, a word it gives
//! even a small probability of being a name ([`likely_names`]), any word it confidently labelled
//! a person's name in an earlier text (the names a stream keeps repeating are redacted even where
//! the context hides them from the model), and capitalised words joined to any of those
//! ([`grow_names`]).

use std::collections::HashSet;
use std::sync::Mutex;

use aion_events::NAME_PARTICLES;

use crate::entities::{aggregate, grow_names, likely_names, words, Entity};
use crate::terms::is_name_part;
use crate::{merge_entities, Result, TokenClassifier};

/// The name probability from which a word is redacted as a name. Measured on the labelled set,
/// with capitalised neighbours: 0.05 covers 97.6 % of the name words, 0.1 97.3 %, the labels
/// alone ≈ 93 %. 0.05 because a name opening a sentence ("Ana Souza pediu…") gets only 0.06–0.08
/// from this model; the cost is redacting some capitalised words next to names ("Cliente").
pub const REDACTION_NAME_THRESHOLD: f32 = 0.05;
/// A labelled name word at least this confident is remembered and redacted everywhere after.
const LEARN_SCORE: f32 = 0.5;
/// A capitalised word with at least this name probability is remembered too.
const LEARN_LIKELY: f32 = 0.3;
/// Remembered name words, at most (tens of bytes each).
const KNOWN_NAMES_CAP: usize = 100_000;

/// A token classifier and the name words it has confidently found so far (in memory only).
pub struct NameFinder {
    model: TokenClassifier,
    known: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for NameFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameFinder").finish_non_exhaustive()
    }
}

impl NameFinder {
    pub fn new(model: TokenClassifier) -> Self {
        Self {
            model,
            known: Mutex::new(HashSet::new()),
        }
    }

    /// The entities to redact in each text, in text order, joined like terms
    /// ([`merge_entities`]: a given name with its surnames is one `PERSON`).
    pub fn find(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<Entity>>> {
        let tokens = self.model.token_predictions(texts, batch_size)?;
        let labels = self.model.labels();
        let labelled: Vec<Vec<Entity>> = texts
            .iter()
            .zip(&tokens)
            .map(|(text, tokens)| aggregate(text, tokens, labels, self.model.aggregation()))
            .collect();
        let likely: Vec<Vec<Entity>> = texts
            .iter()
            .zip(&tokens)
            .map(|(text, tokens)| likely_names(text, tokens, labels, REDACTION_NAME_THRESHOLD))
            .collect();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        // Learnt: names the labels give confidently, and the (capitalised) likely names the model
        // gives a fair probability ("Jane" of "Jane Doe", which this model often labels O).
        let learnt = labelled
            .iter()
            .flatten()
            .filter(|e| is_name_part(&e.label) && e.score >= LEARN_SCORE)
            .chain(likely.iter().flatten().filter(|e| e.score >= LEARN_LIKELY));
        for e in learnt {
            for (_, w) in words(&e.text) {
                let w = w.to_lowercase();
                if w.chars().count() >= 3
                    && !NAME_PARTICLES.contains(&w.as_str())
                    && known.len() < KNOWN_NAMES_CAP
                {
                    known.insert(w);
                }
            }
        }
        Ok(texts
            .iter()
            .zip(likely)
            .zip(labelled)
            .map(|((text, likely), mut found)| {
                let remembered = words(text)
                    .filter(|(_, w)| known.contains(&w.to_lowercase()))
                    .map(|(start, w)| Entity {
                        label: "PERSON".to_owned(),
                        text: w.to_owned(),
                        start,
                        end: start + w.len(),
                        score: 1.0,
                    });
                for e in likely.into_iter().chain(remembered) {
                    if !found.iter().any(|f| f.start < e.end && e.start < f.end) {
                        found.push(e);
                    }
                }
                found.sort_by_key(|e| e.start);
                grow_names(text, &mut found);
                merge_entities(text, &found)
            })
            .collect())
    }
}
