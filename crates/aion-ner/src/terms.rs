//! The terms an event is about: entity mentions weigh 3, keyphrases 1, merged case-insensitively,
//! the top N kept (ties broken by text, so the choice is deterministic).

use std::collections::BTreeMap;

pub use aion_events::Term;

use crate::Entity;

/// Weight of one entity mention.
pub const ENTITY_WEIGHT: u32 = 3;
/// Weight of one keyphrase.
pub const KEYPHRASE_WEIGHT: u32 = 1;

/// Merges entity mentions and keyphrases into the `n` best terms.
pub fn top_terms(entities: &[Entity], keyphrases: &[String], n: usize) -> Vec<Term> {
    let mut terms: BTreeMap<String, Term> = BTreeMap::new();
    let mut add = |text: &str, kind: &str, weight: u32, source: &str| {
        let key = text.trim().to_lowercase();
        if key.is_empty() {
            return;
        }
        let term = terms.entry(key.clone()).or_insert_with(|| Term {
            text: key,
            kind: kind.to_owned(),
            score: 0,
            source: source.to_owned(),
        });
        term.score += weight;
        if term.source != source && !term.source.contains('+') {
            term.source = "ner+keyphrase".into();
            if kind != "KEYPHRASE" {
                term.kind = kind.to_owned();
            }
        }
    };
    for e in entities {
        add(&e.text, &e.label, ENTITY_WEIGHT, "ner");
    }
    for k in keyphrases {
        add(k, "KEYPHRASE", KEYPHRASE_WEIGHT, "keyphrase");
    }
    let mut ranked: Vec<Term> = terms.into_values().collect();
    ranked.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.text.cmp(&b.text)));
    ranked.truncate(n);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(label: &str, text: &str) -> Entity {
        Entity {
            label: label.into(),
            text: text.into(),
            start: 0,
            end: text.len(),
            score: 0.9,
        }
    }

    #[test]
    fn entities_weigh_three_keyphrases_one_merged_case_insensitively() {
        let entities = [
            entity("CITY", "Recife"),
            entity("CITY", "recife"),
            entity("GIVEN_NAME", "Ana"),
        ];
        let keyphrases = [
            "recife".to_string(),
            "prazo".to_string(),
            "entrega".to_string(),
        ];
        let top = top_terms(&entities, &keyphrases, 3);
        let got: Vec<(&str, u32, &str, &str)> = top
            .iter()
            .map(|t| (t.text.as_str(), t.score, t.kind.as_str(), t.source.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("recife", 7, "CITY", "ner+keyphrase"),
                ("ana", 3, "GIVEN_NAME", "ner"),
                ("entrega", 1, "KEYPHRASE", "keyphrase"),
            ]
        );
    }
}
