//! PII redaction before anything reaches a shard: e-mail addresses, CPF and CNPJ numbers whose
//! check digits are valid, card numbers that pass the Luhn check, and phone numbers, replaced by
//! typed placeholders. Numbers that only look like a CPF/CNPJ/card (wrong check digits: order
//! numbers, protocols) are kept — they are not personal data and the trainer needs them.
//!
//! Order matters: documents and cards are matched before phones, whose digit runs they contain.

use std::collections::BTreeMap;

use regex::{Captures, Regex, RegexBuilder};

use aion_events::{Term, NAME_PARTICLES};

/// The kinds of PII replaced, and their placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pii {
    Email,
    Cpf,
    Cnpj,
    Card,
    Phone,
    /// Found by the NER model: given names and surnames.
    Person,
    /// Found by the NER model: street, building number, secondary address, ZIP code.
    Address,
    /// Found by the NER model: tax, government, passport and driver's licence ids.
    Id,
    /// Found by the NER model: bank account and routing numbers.
    Account,
    Url,
}

impl Pii {
    /// The kind of an entity type of the NER model; `None` for what does not identify a person
    /// (cities, states, keyphrases).
    pub fn of_entity(kind: &str) -> Option<Pii> {
        Some(match kind {
            "GIVEN_NAME" | "SURNAME" | "PERSON" => Pii::Person,
            "EMAIL" => Pii::Email,
            "PHONE" => Pii::Phone,
            "STREET_NAME" | "BUILDING_NUMBER" | "SECONDARY_ADDRESS" | "ZIP_CODE" => Pii::Address,
            "TAX_ID" | "GOVERNMENT_ID" | "PASSPORT" | "DRIVERS_LICENSE" => Pii::Id,
            "BANK_ACCOUNT" | "ROUTING_NUMBER" => Pii::Account,
            "URL" => Pii::Url,
            _ => return None,
        })
    }

    pub fn placeholder(self) -> &'static str {
        match self {
            Pii::Email => "<EMAIL>",
            Pii::Cpf => "<CPF>",
            Pii::Cnpj => "<CNPJ>",
            Pii::Card => "<CARD>",
            Pii::Phone => "<PHONE>",
            Pii::Person => "<PERSON>",
            Pii::Address => "<ADDRESS>",
            Pii::Id => "<ID>",
            Pii::Account => "<ACCOUNT>",
            Pii::Url => "<URL>",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pii::Email => "email",
            Pii::Cpf => "cpf",
            Pii::Cnpj => "cnpj",
            Pii::Card => "card",
            Pii::Phone => "phone",
            Pii::Person => "person",
            Pii::Address => "address",
            Pii::Id => "id",
            Pii::Account => "account",
            Pii::Url => "url",
        }
    }
}

/// Compiled patterns; build once per stage.
#[derive(Debug)]
pub struct Redactor {
    rules: Vec<(Pii, Regex)>,
}

/// Redactions made, by kind.
pub type Counts = BTreeMap<Pii, u64>;

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// Brazilian mod-11 check digit over `d` with weights counting down from `first_weight`
/// (CPF), or cycling 2..=9 from the right (CNPJ).
fn mod11(sum: u32) -> u32 {
    let r = sum % 11;
    if r < 2 {
        0
    } else {
        11 - r
    }
}

pub fn valid_cpf(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 11 || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    (9..=10).all(|len| {
        let sum: u32 = (0..len).map(|i| d[i] * (len as u32 + 1 - i as u32)).sum();
        mod11(sum) == d[len]
    })
}

/// A CNPJ, numeric or alphanumeric (from July 2026: `[0-9A-Z]` in the first 12 positions, each
/// worth its ASCII code − 48 in the check-digit sums; the two check digits stay numeric).
pub fn valid_cnpj(s: &str) -> bool {
    if s.chars().any(|c| c.is_ascii_lowercase()) {
        return false;
    }
    let d: Vec<u32> = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c as u32 - 48)
        .collect();
    if d.len() != 14 || d[12..].iter().any(|&x| x > 9) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    (12..=13).all(|len| {
        let sum: u32 = (0..len)
            .map(|i| d[i] * (2 + ((len - 1 - i) as u32 % 8)))
            .sum();
        mod11(sum) == d[len]
    })
}

pub fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                if x * 2 > 9 {
                    x * 2 - 9
                } else {
                    x * 2
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    pub fn new() -> Self {
        let rule = |pii, pattern: &str| {
            // The patterns are constants; a typo is caught by every test.
            #[allow(clippy::expect_used)]
            (pii, Regex::new(pattern).expect("valid PII pattern"))
        };
        Self {
            rules: vec![
                rule(
                    Pii::Email,
                    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                ),
                rule(
                    Pii::Cnpj,
                    r"\b[0-9A-Z]{2}\.?[0-9A-Z]{3}\.?[0-9A-Z]{3}/?[0-9A-Z]{4}-?\d{2}\b",
                ),
                rule(Pii::Cpf, r"\b\d{3}\.?\d{3}\.?\d{3}-?\d{2}\b"),
                rule(Pii::Card, r"\b\d(?:[ -]?\d){12,18}\b"),
                // +55 (11) 98765-4321, (11) 3456-7890, +1 (312) 555-0199, 11987654321.
                rule(
                    Pii::Phone,
                    r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\b\d{2,4})[\s.-]?\d{3,5}[\s.-]?\d{4}\b",
                ),
            ],
        }
    }

    /// Replaces every PII match in `text`, adding to `counts`.
    pub fn redact(&self, text: &str, counts: &mut Counts) -> String {
        let mut out = text.to_owned();
        // Cheap gates first: most text has no '@' and few digits, and every pattern needs one.
        let has_at = text.contains('@');
        let digits = text.bytes().filter(u8::is_ascii_digit).count();
        for (pii, re) in &self.rules {
            let possible = match pii {
                Pii::Email => has_at,
                Pii::Cpf => digits >= 11,
                // An alphanumeric CNPJ needs only its two check digits.
                Pii::Cnpj => digits >= 2,
                Pii::Card => digits >= 13,
                Pii::Phone => digits >= 8,
                // Found by the NER model, not by a pattern.
                Pii::Person | Pii::Address | Pii::Id | Pii::Account | Pii::Url => false,
            };
            if !possible {
                continue;
            }
            let check: fn(&str) -> bool = match pii {
                Pii::Cpf => valid_cpf,
                Pii::Cnpj => valid_cnpj,
                Pii::Card => luhn,
                _ => |_| true,
            };
            let replaced = re.replace_all(&out, |c: &Captures<'_>| {
                let m = &c[0];
                if check(m) {
                    *counts.entry(*pii).or_default() += 1;
                    pii.placeholder().to_owned()
                } else {
                    m.to_owned()
                }
            });
            if let std::borrow::Cow::Owned(s) = replaced {
                out = s;
            }
        }
        out
    }
}

/// An entity found in a text: its type and byte span.
pub type Span = (String, usize, usize);

/// Finds what no pattern can — names, addresses, ids in free text — in the answer's own words.
/// The runtime supplies a NER model; this crate does not depend on the enricher's.
pub trait EntityFinder: Send + Sync + std::fmt::Debug {
    /// The entities of each text.
    fn find(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<Span>>, String>;
}

/// A placeholder this module writes: `<` upper-case letters `>`.
static PLACEHOLDER: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    // A constant pattern; a typo is caught by every test.
    #[allow(clippy::expect_used)]
    Regex::new("<[A-Z]+>").expect("valid placeholder pattern")
});

/// Replaces the spans of identifying types ([`Pii::of_entity`]) by their placeholders, adding to
/// `counts`. Overlapping or out-of-range spans are skipped, never half-applied.
pub fn redact_spans(text: &str, spans: &[Span], counts: &mut Counts) -> String {
    // Placeholders already in the text stay as they are ("<CPF>" is not a name).
    let placeholders: Vec<(usize, usize)> = PLACEHOLDER
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect();
    let mut spans: Vec<(usize, usize, Pii)> = spans
        .iter()
        .filter_map(|(kind, start, end)| Pii::of_entity(kind).map(|pii| (*start, *end, pii)))
        .filter(|(start, end, _)| start < end && text.get(*start..*end).is_some())
        .filter(|(start, end, _)| !placeholders.iter().any(|p| p.0 < *end && *start < p.1))
        .collect();
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, pii) in spans {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(pii.placeholder());
        *counts.entry(pii).or_default() += 1;
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// The identifying entities (names, addresses, ids: [`Pii::of_entity`]) the NER model found in
/// an answer's retrieval, matched case-insensitively on word boundaries in the answer's text.
/// Entity texts are lower-cased by the enricher, so a plain string replace would miss "Maria".
#[derive(Debug)]
pub struct PrivateEntities {
    /// One alternation, longest text first so "maria silva" wins over "maria".
    pattern: Option<(Regex, Vec<(String, Pii)>)>,
}

impl PrivateEntities {
    /// From (text, entity type) pairs; only identifying types count.
    pub fn of<'a>(entities: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut private: Vec<(String, Pii)> = Vec::new();
        for (text, kind) in entities {
            let Some(pii) = Pii::of_entity(kind) else {
                continue;
            };
            let text = text.trim().to_lowercase();
            if pii == Pii::Person {
                // Each part of a name alone too: "silva" of "rodrigo da silva" in a keyphrase.
                private.extend(
                    text.split(|c: char| !c.is_alphabetic())
                        .filter(|w| w.chars().count() >= 3 && !NAME_PARTICLES.contains(w))
                        .map(|w| (w.to_owned(), pii)),
                );
            }
            if !text.is_empty() {
                private.push((text, pii));
            }
        }
        private.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        private.dedup_by(|a, b| a.0 == b.0);
        if private.is_empty() {
            return Self { pattern: None };
        }
        let alternation: Vec<String> = private.iter().map(|(t, _)| regex::escape(t)).collect();
        let pattern = RegexBuilder::new(&format!(r"\b(?:{})\b", alternation.join("|")))
            .case_insensitive(true)
            .build()
            .ok();
        Self {
            pattern: pattern.map(|re| (re, private)),
        }
    }

    /// Of an event's terms.
    pub fn of_terms(terms: &[Term]) -> Self {
        Self::of(terms.iter().map(|t| (t.text.as_str(), t.kind.as_str())))
    }

    pub fn is_empty(&self) -> bool {
        self.pattern.is_none()
    }

    /// Replaces every occurrence by its type's placeholder, adding to `counts`.
    pub fn redact(&self, text: &str, counts: &mut Counts) -> String {
        let Some((re, private)) = &self.pattern else {
            return text.to_owned();
        };
        re.replace_all(text, |c: &Captures<'_>| {
            let found = c[0].to_lowercase();
            let pii = private
                .iter()
                .find(|(t, _)| *t == found)
                .map_or(Pii::Person, |(_, pii)| *pii);
            *counts.entry(pii).or_default() += 1;
            pii.placeholder().to_owned()
        })
        .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(text: &str) -> (String, Counts) {
        let mut counts = Counts::new();
        (Redactor::new().redact(text, &mut counts), counts)
    }

    #[test]
    fn check_digits() {
        assert!(valid_cpf("529.982.247-25"));
        assert!(valid_cpf("52998224725"));
        assert!(!valid_cpf("529.982.247-24"));
        assert!(!valid_cpf("111.111.111-11"));
        assert!(valid_cnpj("11.222.333/0001-81"));
        assert!(!valid_cnpj("11.222.333/0001-80"));
        // The alphanumeric CNPJ of the Receita Federal's specification.
        assert!(valid_cnpj("12.ABC.345/01DE-35"));
        assert!(valid_cnpj("12ABC34501DE35"));
        assert!(!valid_cnpj("12.ABC.345/01DE-36"));
        assert!(!valid_cnpj("12.abc.345/01de-35"), "upper case only");
        assert!(luhn("4111 1111 1111 1111"));
        assert!(!luhn("4111 1111 1111 1112"));
    }

    #[test]
    fn portuguese_and_english_pii_is_replaced_by_type() {
        let cases = [
            (
                "O CPF 529.982.247-25 de Ana",
                "O CPF <CPF> de Ana",
                Pii::Cpf,
            ),
            ("CPF 52998224725 vinculado", "CPF <CPF> vinculado", Pii::Cpf),
            (
                "empresa 11.222.333/0001-81 ativa",
                "empresa <CNPJ> ativa",
                Pii::Cnpj,
            ),
            (
                "nova empresa 12.ABC.345/01DE-35 aberta",
                "nova empresa <CNPJ> aberta",
                Pii::Cnpj,
            ),
            (
                "e-mail ana.souza@mail.com.br agora",
                "e-mail <EMAIL> agora",
                Pii::Email,
            ),
            (
                "Change email to j.doe+x@corp.example.org now",
                "Change email to <EMAIL> now",
                Pii::Email,
            ),
            (
                "ligue +55 (11) 98765-4321 hoje",
                "ligue <PHONE> hoje",
                Pii::Phone,
            ),
            ("tel (11) 3456-7890.", "tel <PHONE>.", Pii::Phone),
            ("phone +1 (312) 555-0199?", "phone <PHONE>?", Pii::Phone),
            (
                "card 4111 1111 1111 1111 expired",
                "card <CARD> expired",
                Pii::Card,
            ),
        ];
        for (input, expected, pii) in cases {
            let (out, counts) = redact(input);
            assert_eq!(out, expected, "{input}");
            assert_eq!(counts.get(&pii), Some(&1), "{input}");
        }
    }

    #[test]
    fn names_the_model_found_are_replaced_in_any_case_and_only_on_word_boundaries() {
        let term = |text: &str, kind: &str| Term {
            text: text.into(),
            kind: kind.into(),
            score: 3,
            source: "ner".into(),
        };
        let private = PrivateEntities::of_terms(&[
            term("maria", "GIVEN_NAME"),
            term("maria silva", "GIVEN_NAME"),
            term("rua augusta", "STREET_NAME"),
            term("curitiba", "CITY"),
        ]);
        let mut counts = Counts::new();
        let out = private.redact(
            "Maria Silva mora na Rua Augusta, MARIA disse; Mariana e Curitiba ficam.",
            &mut counts,
        );
        assert_eq!(
            out,
            "<PERSON> mora na <ADDRESS>, <PERSON> disse; Mariana e Curitiba ficam."
        );
        assert_eq!(counts.get(&Pii::Person), Some(&2));
        assert_eq!(counts.get(&Pii::Address), Some(&1));
        assert!(PrivateEntities::of_terms(&[term("curitiba", "CITY")]).is_empty());
    }

    #[test]
    fn spans_of_identifying_types_are_replaced_whole() {
        let text = "Thiago Whitaker mora em Recife <CPF>";
        let spans = [
            ("PERSON".to_string(), 0, 15),
            ("TAX_ID".to_string(), 32, 35),
            ("CITY".to_string(), 24, 30),
            ("SURNAME".to_string(), 7, 15),
            ("SURNAME".to_string(), 20, 99),
        ];
        let mut counts = Counts::new();
        assert_eq!(
            redact_spans(text, &spans, &mut counts),
            "<PERSON> mora em Recife <CPF>"
        );
        assert_eq!(counts.get(&Pii::Person), Some(&1));
    }

    #[test]
    fn numbers_with_wrong_check_digits_are_not_documents() {
        let (out, counts) = redact("pedido 529.982.247-24 e protocolo 11.222.333/0001-80");
        assert_eq!(out, "pedido 529.982.247-24 e protocolo 11.222.333/0001-80");
        assert!(!counts.contains_key(&Pii::Cpf) && !counts.contains_key(&Pii::Cnpj));
        let (out, _) = redact("Qual o prazo de entrega do Fibra 500 Mega para Recife?");
        assert_eq!(
            out,
            "Qual o prazo de entrega do Fibra 500 Mega para Recife?"
        );
    }
}
