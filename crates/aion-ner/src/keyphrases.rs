//! Keyphrases: a RAKE-style statistical extractor (Rose et al., 2010) that needs no model and
//! works the same for Brazilian Portuguese and English. Candidate phrases are the runs of words
//! between stop words and punctuation; a word scores degree / frequency over the text; a phrase
//! scores the sum of its words. Deterministic: ties are broken by the phrase text.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

/// Common Portuguese and English function words (articles, prepositions, pronouns, auxiliaries).
const STOP_WORDS: &str = "a à ao aos as às até com como da das de dela dele deles do dos e é ela ele eles em entre era essa esse esta está este eu foi há isso já la lhe mais mas me mesmo meu minha muito na não nas nem no nos nós o os ou para pela pelas pelo pelos por qual quando que quem se sem ser seu seus só sua suas também te tem tu um uma umas uns você vocês vai vou são foram pode posso qual quais \
a about above after again all am an and any are as at be because been before being below between both but by can could did do does doing down during each few for from further had has have having he her here hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over own same she should so some such than that the their them then there these they this those through to too under until up very was we were what when where which while who whom why will with would you your yours";

fn stop_words() -> &'static HashSet<&'static str> {
    static WORDS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| STOP_WORDS.split_whitespace().collect())
}

/// The `n` best keyphrases of `text`, lower-cased, best first.
pub fn keyphrases(text: &str, n: usize) -> Vec<String> {
    let stops = stop_words();
    let lower = text.to_lowercase();
    let mut phrases: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for token in lower.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\'')) {
        // An empty token is a delimiter run (punctuation or repeated spaces): RAKE cuts there too.
        let boundary =
            token.is_empty() || stops.contains(token) || token.chars().all(char::is_numeric);
        if boundary {
            if !current.is_empty() {
                phrases.push(std::mem::take(&mut current));
            }
        } else {
            current.push(token);
        }
    }
    if !current.is_empty() {
        phrases.push(current);
    }
    // Long runs are sentences, not phrases.
    phrases.retain(|p| p.len() <= 4 && p.iter().any(|w| w.chars().count() > 2));
    let mut frequency: BTreeMap<&str, f64> = BTreeMap::new();
    let mut degree: BTreeMap<&str, f64> = BTreeMap::new();
    for p in &phrases {
        for w in p {
            *frequency.entry(w).or_default() += 1.0;
            *degree.entry(w).or_default() += p.len() as f64;
        }
    }
    let mut scored: BTreeMap<String, f64> = BTreeMap::new();
    for p in &phrases {
        let score: f64 = p.iter().map(|w| degree[w] / frequency[w]).sum();
        scored.insert(p.join(" "), score);
    }
    let mut ranked: Vec<(String, f64)> = scored.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portuguese_and_english_phrases_without_stop_words() {
        let pt = keyphrases(
            "Qual o prazo de entrega do plano Fibra 500 Mega para Recife?",
            5,
        );
        assert!(pt.contains(&"prazo".to_string()), "{pt:?}");
        assert!(pt.contains(&"entrega".to_string()), "{pt:?}");
        assert!(
            pt.iter()
                .all(|p| !p.split(' ').any(|w| w == "de" || w == "para")),
            "{pt:?}"
        );
        let en = keyphrases(
            "How do I cancel my premium fiber plan with the provider?",
            3,
        );
        assert_eq!(en[0], "premium fiber plan", "{en:?}");
    }

    #[test]
    fn deterministic_and_safe_on_odd_input() {
        let text = "Entrega rápida, entrega garantida; suporte técnico 24h 🙂 日本語 テキスト";
        assert_eq!(keyphrases(text, 10), keyphrases(text, 10));
        assert!(keyphrases("", 5).is_empty());
        assert!(keyphrases("   \n\t ", 5).is_empty());
        assert!(keyphrases("de para com o a", 5).is_empty());
        let huge = "palavra chave. ".repeat(100_000);
        assert_eq!(keyphrases(&huge, 3), vec!["palavra chave".to_string()]);
    }
}
