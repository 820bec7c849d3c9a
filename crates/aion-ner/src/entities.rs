//! From per-token predictions to entities at word level, with the semantics of transformers'
//! `TokenClassificationPipeline` and its `aggregation_strategy` "first" / "max" / "average"
//! (`aggregate_words`, then `group_entities`):
//! 1. wordpieces are joined into words — a token is a continuation of the previous word when its
//!    vocabulary form is longer or shorter than the text it covers (WordPiece's `##` prefix);
//! 2. each word takes one label: its first piece's best label ("first"), the best label of its
//!    most confident piece ("max"), or the best label of its pieces' mean probabilities
//!    ("average"), so a name is never cut into fragments;
//! 3. consecutive words merge into one entity when they share a type and the later one is not
//!    tagged `B-`; `O` words end entities. An entity's score is the mean of its words' scores.
//!
//! The shipped model tags every wordpiece `B-` ("Nascimento" = `nas` `##ci` `##mento`, all
//! B-SURNAME): "simple" grouping over pieces would make three entities of one surname.

use std::str::FromStr;

use aion_events::NAME_PARTICLES;

use crate::terms::is_name_part;
use serde::Serialize;

/// One token's label probabilities, the character span it covers, and whether it continues the
/// word of the token before it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPrediction {
    /// Probability of every label, indexed like the model's `id2label`.
    pub probs: Vec<f32>,
    /// Byte offsets of the text the token covers.
    pub start: usize,
    pub end: usize,
    /// A continuation piece (`##…`) of the previous token's word.
    pub subword: bool,
}

/// An entity found in a text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// The type without its B-/I- prefix, e.g. `GIVEN_NAME`.
    pub label: String,
    /// The text covered, `text[start..end]`.
    pub text: String,
    /// Byte offsets into the text (whole words: never inside a word).
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// How a word's label is chosen from its wordpieces' predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// The first piece's best label. The default: best entity F1 on the labelled set
    /// (`data/labelled.jsonl`, measured by the crate's integration tests), and the strategy the
    /// transformers documentation recommends for word-based models.
    #[default]
    First,
    /// The best label of the piece with the highest probability.
    Max,
    /// The best label of the pieces' mean probabilities.
    Average,
}

impl Aggregation {
    pub const ALL: [Aggregation; 3] = [Aggregation::First, Aggregation::Max, Aggregation::Average];

    pub fn name(self) -> &'static str {
        match self {
            Aggregation::First => "first",
            Aggregation::Max => "max",
            Aggregation::Average => "average",
        }
    }
}

impl FromStr for Aggregation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("`{s}` is not an aggregation: use first, max or average"))
    }
}

/// The most probable label and its probability.
pub fn argmax(probs: &[f32]) -> (usize, f32) {
    probs.iter().enumerate().fold(
        (0, f32::MIN),
        |acc, (j, &p)| if p > acc.1 { (j, p) } else { acc },
    )
}

/// (begins an entity, type) of a label; `O` is (false, "O"), as transformers' `get_tag`.
fn tag(label: &str) -> (bool, &str) {
    match label.split_once('-') {
        Some(("B", t)) => (true, t),
        Some(("I", t)) => (false, t),
        _ => (false, label),
    }
}

/// One word: its label index, score and byte span.
struct Word {
    label: usize,
    score: f32,
    start: usize,
    end: usize,
}

fn word(pieces: &[TokenPrediction], strategy: Aggregation) -> Option<Word> {
    let (first, last) = (pieces.first()?, pieces.last()?);
    let (label, score) = match strategy {
        Aggregation::First => argmax(&first.probs),
        Aggregation::Max => pieces
            .iter()
            .map(|p| argmax(&p.probs))
            .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a }),
        Aggregation::Average => {
            let mut mean = vec![0f32; first.probs.len()];
            for p in pieces {
                for (m, x) in mean.iter_mut().zip(&p.probs) {
                    *m += x / pieces.len() as f32;
                }
            }
            argmax(&mean)
        }
    };
    Some(Word {
        label,
        score,
        start: first.start,
        end: last.end,
    })
}

/// The entities of `text`, given the predictions of its tokens in order (special tokens
/// excluded) and the model's labels.
pub fn aggregate(
    text: &str,
    tokens: &[TokenPrediction],
    labels: &[String],
    strategy: Aggregation,
) -> Vec<Entity> {
    let mut words = Vec::new();
    let mut begin = 0;
    for i in 1..=tokens.len() {
        if i == tokens.len() || !tokens[i].subword {
            words.extend(word(&tokens[begin..i], strategy));
            begin = i;
        }
    }
    let label = |w: &Word| labels.get(w.label).map_or("O", String::as_str);
    // (type, start, end, score sum, words)
    let mut groups: Vec<(&str, usize, usize, f32, usize)> = Vec::new();
    let mut previous: Option<&str> = None;
    for w in &words {
        let (begins, kind) = tag(label(w));
        match groups.last_mut() {
            Some(g) if previous == Some(kind) && !begins => {
                g.2 = w.end;
                g.3 += w.score;
                g.4 += 1;
            }
            _ => groups.push((kind, w.start, w.end, w.score, 1)),
        }
        previous = Some(kind);
    }
    groups
        .into_iter()
        .filter(|g| g.0 != "O")
        .map(|(kind, start, end, sum, n)| Entity {
            label: kind.to_owned(),
            text: text.get(start..end).unwrap_or_default().to_owned(),
            start,
            end,
            score: sum / n as f32,
        })
        .collect()
}

/// Labels whose type names a person.
fn is_person_label(label: &str) -> bool {
    matches!(tag(label).1, "GIVEN_NAME" | "SURNAME")
}

/// Recall over precision, for redaction (never for terms): every capitalised word to which the
/// model gives at least `threshold` probability of belonging to a person's name (all GIVEN_NAME
/// and SURNAME labels summed, on the word's most confident piece), as a `PERSON` entity. Only
/// capitalised words: next to a name the model gives verbs a little name probability too
/// ("pediu" in "Maria Silva pediu"), and a name written in lower case is left to the labels.
pub fn likely_names(
    text: &str,
    tokens: &[TokenPrediction],
    labels: &[String],
    threshold: f32,
) -> Vec<Entity> {
    let person: Vec<usize> = (0..labels.len())
        .filter(|&i| is_person_label(&labels[i]))
        .collect();
    // (start, end, probability of a name) per word.
    let mut words: Vec<(usize, usize, f32)> = Vec::new();
    for t in tokens {
        let p: f32 = person.iter().filter_map(|&i| t.probs.get(i)).sum();
        match words.last_mut() {
            Some(w) if t.subword => {
                w.1 = t.end;
                w.2 = w.2.max(p);
            }
            _ => words.push((t.start, t.end, p)),
        }
    }
    let capitalised = |start: usize| {
        text.get(start..)
            .and_then(|t| t.chars().next())
            .is_some_and(char::is_uppercase)
    };
    words
        .into_iter()
        .filter(|w| w.2 >= threshold && capitalised(w.0))
        .map(|(start, end, p)| Entity {
            label: "PERSON".to_owned(),
            text: text.get(start..end).unwrap_or_default().to_owned(),
            start,
            end,
            score: p,
        })
        .collect()
}

/// The words of `text` with their byte offsets (letters only: "Nascimento," is "Nascimento").
pub fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

/// Grows the names among `entities` (sorted by start) over their capitalised neighbours: a word
/// starting with a capital, joined to a name by a space or by spaces around a name particle, is
/// a `PERSON` word too ("Nascimento" after a found "Gustavo"), until nothing changes.
pub fn grow_names(text: &str, entities: &mut Vec<Entity>) {
    let all: Vec<(usize, &str)> = words(text).collect();
    let joined = |a: (usize, &str), b: (usize, &str)| {
        let (lo, hi) = if a.0 < b.0 { (a, b) } else { (b, a) };
        text.get(lo.0 + lo.1.len()..hi.0).is_some_and(|gap| {
            gap.starts_with(' ')
                && gap.ends_with(' ')
                && gap
                    .split(' ')
                    .all(|w| w.is_empty() || NAME_PARTICLES.contains(&w))
        })
    };
    let mut grew = true;
    while grew {
        grew = false;
        for (k, &(start, w)) in all.iter().enumerate() {
            let end = start + w.len();
            let capitalised = w.chars().next().is_some_and(char::is_uppercase);
            if !capitalised || entities.iter().any(|e| e.start < end && start < e.end) {
                continue;
            }
            // The nearest word on each side that is not a particle.
            let side = |step: isize| {
                let mut j = k as isize + step;
                while j >= 0
                    && (j as usize) < all.len()
                    && NAME_PARTICLES.contains(&all[j as usize].1)
                {
                    j += step;
                }
                all.get(usize::try_from(j).ok()?).copied()
            };
            let next_to_name = [side(-1), side(1)].into_iter().flatten().any(|n| {
                joined((start, w), n)
                    && entities.iter().any(|e| {
                        is_name_part(&e.label) && e.start <= n.0 && n.0 + n.1.len() <= e.end
                    })
            });
            if next_to_name {
                entities.push(Entity {
                    label: "PERSON".to_owned(),
                    text: w.to_owned(),
                    start,
                    end,
                    score: 0.0,
                });
                entities.sort_by_key(|e| e.start);
                grew = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: [&str; 5] = ["O", "B-GIVEN_NAME", "I-GIVEN_NAME", "B-SURNAME", "B-CITY"];

    fn labels() -> Vec<String> {
        LABELS.iter().map(|l| l.to_string()).collect()
    }

    /// A token of `text[start..end]` whose best label is `label` with probability `p`.
    fn t(label: &str, p: f32, start: usize, end: usize, subword: bool) -> TokenPrediction {
        let i = LABELS.iter().position(|l| *l == label).unwrap();
        let mut probs = vec![(1.0 - p) / 4.0; LABELS.len()];
        probs[i] = p;
        TokenPrediction {
            probs,
            start,
            end,
            subword,
        }
    }

    fn found(e: &[Entity]) -> Vec<(&str, &str)> {
        e.iter()
            .map(|e| (e.label.as_str(), e.text.as_str()))
            .collect()
    }

    #[test]
    fn every_piece_tagged_b_makes_one_word_entity() {
        // "Lucas Nascimento mora em Recife": the model's B-on-every-piece pattern.
        let text = "Lucas Nascimento mora em Recife";
        let tokens = [
            t("B-GIVEN_NAME", 0.9, 0, 5, false),
            t("B-SURNAME", 0.8, 6, 9, false),
            t("B-SURNAME", 0.7, 9, 11, true),
            t("B-SURNAME", 0.9, 11, 16, true),
            t("O", 0.99, 17, 21, false),
            t("O", 0.99, 22, 24, false),
            t("B-CITY", 0.6, 25, 31, false),
        ];
        let e = aggregate(text, &tokens, &labels(), Aggregation::First);
        assert_eq!(
            found(&e),
            [
                ("GIVEN_NAME", "Lucas"),
                ("SURNAME", "Nascimento"),
                ("CITY", "Recife")
            ]
        );
        assert!((e[1].score - 0.8).abs() < 1e-6, "first piece's score");
    }

    #[test]
    fn strategies_differ_only_in_how_a_word_takes_its_label() {
        // "Whitaker" = w ##hita ##ker: first piece O, the others SURNAME.
        let text = "Whitaker";
        let tokens = [
            t("O", 0.5, 0, 1, false),
            t("B-SURNAME", 0.9, 1, 5, true),
            t("B-SURNAME", 0.8, 5, 8, true),
        ];
        let run = |s| found(&aggregate(text, &tokens, &labels(), s)).len();
        assert_eq!(run(Aggregation::First), 0);
        assert_eq!(run(Aggregation::Max), 1);
        assert_eq!(run(Aggregation::Average), 1);
        let e = aggregate(text, &tokens, &labels(), Aggregation::Max);
        assert_eq!((e[0].start, e[0].end), (0, 8), "the whole word");
    }

    #[test]
    fn i_tags_continue_entities_and_b_tags_start_new_ones() {
        let text = "ana maria souza";
        let tokens = [
            t("B-GIVEN_NAME", 0.9, 0, 3, false),
            t("I-GIVEN_NAME", 0.7, 4, 9, false),
            t("B-SURNAME", 0.8, 10, 15, false),
        ];
        let e = aggregate(text, &tokens, &labels(), Aggregation::First);
        assert_eq!(
            found(&e),
            [("GIVEN_NAME", "ana maria"), ("SURNAME", "souza")]
        );
        assert!((e[0].score - 0.8).abs() < 1e-6, "mean over words");
        // An I- after O of another type starts an entity, as transformers does.
        let tokens = [
            t("O", 0.9, 0, 3, false),
            t("I-GIVEN_NAME", 0.7, 4, 9, false),
        ];
        let e = aggregate(text, &tokens, &labels(), Aggregation::First);
        assert_eq!(found(&e), [("GIVEN_NAME", "maria")]);
    }

    #[test]
    fn likely_names_take_doubtful_name_words_and_names_grow_over_capitalised_neighbours() {
        let text = "Cliente Lucas da Nascimento, Recife";
        let tokens = [
            t("O", 0.9, 0, 7, false),
            t("B-GIVEN_NAME", 0.3, 8, 13, false),
            t("O", 0.9, 14, 16, false),
            t("O", 0.9, 17, 20, false),
            t("O", 0.9, 20, 27, true),
            t("O", 0.9, 27, 28, false),
            t("B-CITY", 0.9, 29, 35, false),
        ];
        // "Lucas" is doubtful (name labels 0.65 in all) but above 0.2, not above 0.7.
        let mut found = likely_names(text, &tokens, &labels(), 0.2);
        assert_eq!(
            found.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            ["Lucas"]
        );
        assert!(likely_names(text, &tokens, &labels(), 0.7).is_empty());
        // "Nascimento" joins it through "da", "Cliente" through a space; "Recife" is behind a
        // comma.
        grow_names(text, &mut found);
        let words: Vec<&str> = found.iter().map(|e| &text[e.start..e.end]).collect();
        assert_eq!(words, ["Cliente", "Lucas", "Nascimento"]);
    }

    #[test]
    fn strategies_parse_by_name() {
        for a in Aggregation::ALL {
            assert_eq!(a.name().parse::<Aggregation>(), Ok(a));
        }
        assert!("simple".parse::<Aggregation>().is_err());
    }
}
