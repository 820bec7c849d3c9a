//! The terms an event is about: entity mentions weigh 3, keyphrases 1, merged case-insensitively,
//! the top N kept (ties broken by text, so the choice is deterministic).
//!
//! A term is what a reader means by an entity, not a word of it: a given name followed by
//! surnames is one `PERSON` ("thiago whitaker"), and pieces of one type that touch (an e-mail or
//! a CPF the tokenizer split at its punctuation) are one term. The word-level entities keep their
//! fine types in the event's `mentions`.

use std::collections::BTreeMap;

pub use aion_events::Term;

use crate::Entity;
use aion_events::NAME_PARTICLES;

/// Weight of one entity mention.
pub const ENTITY_WEIGHT: u32 = 3;
/// Weight of one keyphrase.
pub const KEYPHRASE_WEIGHT: u32 = 1;

/// The type of a term made of a given name and surnames.
pub const PERSON: &str = "PERSON";

/// A type that names (part of) a person.
pub(crate) fn is_name_part(label: &str) -> bool {
    matches!(label, "GIVEN_NAME" | "SURNAME" | PERSON)
}

/// The entities of `text` joined into terms: name parts separated only by spaces or particles
/// become one [`PERSON`]; touching pieces of one type (nothing or a little punctuation between,
/// no space) become one entity of that type. Scores are averaged.
pub fn merge_entities(text: &str, entities: &[Entity]) -> Vec<Entity> {
    let mut out: Vec<(Entity, usize)> = Vec::new();
    for e in entities {
        if let Some((last, n)) = out.last_mut() {
            let gap = text.get(last.end..e.start).unwrap_or("\n");
            let touching =
                last.label == e.label && gap.len() <= 3 && !gap.chars().any(char::is_whitespace);
            let person = is_name_part(&last.label)
                && is_name_part(&e.label)
                && !gap.contains('\n')
                && gap
                    .split_whitespace()
                    .all(|w| NAME_PARTICLES.contains(&w.to_lowercase().as_str()))
                && gap.chars().all(|c| c.is_alphabetic() || c == ' ');
            if touching || person {
                if person && !touching {
                    last.label = PERSON.to_owned();
                }
                last.end = e.end;
                last.text = text
                    .get(last.start..last.end)
                    .unwrap_or_default()
                    .to_owned();
                last.score += e.score;
                *n += 1;
                continue;
            }
        }
        out.push((e.clone(), 1));
    }
    out.into_iter()
        .map(|(mut e, n)| {
            e.score /= n as f32;
            e
        })
        .collect()
}

/// Merges entity terms ([`merge_entities`]) and keyphrases into the `n` best terms.
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

    fn at(text: &str, label: &str, word: &str) -> Entity {
        let start = text.find(word).unwrap();
        Entity {
            label: label.into(),
            text: word.into(),
            start,
            end: start + word.len(),
            score: 0.9,
        }
    }

    #[test]
    fn names_become_one_person_and_split_pieces_one_term() {
        let text = "Thiago Whitaker e Maria da Silva; CPF 859.952.890-47 de Recife, Brasil";
        let entities = [
            at(text, "GIVEN_NAME", "Thiago"),
            at(text, "SURNAME", "Whitaker"),
            at(text, "GIVEN_NAME", "Maria"),
            at(text, "SURNAME", "Silva"),
            at(text, "TAX_ID", "859"),
            at(text, "TAX_ID", "952.890"),
            at(text, "TAX_ID", "47"),
            at(text, "CITY", "Recife"),
            at(text, "COUNTRY", "Brasil"),
        ];
        let merged: Vec<(String, String)> = merge_entities(text, &entities)
            .into_iter()
            .map(|e| (e.label, e.text))
            .collect();
        let expected = [
            ("PERSON", "Thiago Whitaker"),
            ("PERSON", "Maria da Silva"),
            ("TAX_ID", "859.952.890-47"),
            ("CITY", "Recife"),
            ("COUNTRY", "Brasil"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(merged, expected);
        // Punctuation between name parts separates people.
        let text = "Ana, Whitaker";
        let e = [
            at(text, "GIVEN_NAME", "Ana"),
            at(text, "SURNAME", "Whitaker"),
        ];
        assert_eq!(merge_entities(text, &e).len(), 2);
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
