use aion_events::{decode, AnswerEvent, DecodeLimits, RetrievalEvent};

use super::*;

fn config(scenario: Scenario, invalid: f64) -> TrafficConfig {
    TrafficConfig {
        seed: 7,
        tenants: vec!["acme".into(), "globex".into()],
        count: 4_000,
        start: DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        span: Duration::hours(48),
        scenario,
        invalid_fraction: invalid,
        late_fraction: 0.02,
    }
}

fn fallback_rate(payloads: &[Payload], tenant: &str, from: usize) -> f64 {
    let answers: Vec<AnswerEvent> = payloads[from..]
        .iter()
        .filter(|p| p.topic == topics::ANSWER && p.key == tenant)
        .map(|p| decode(&p.bytes, &DecodeLimits::default()).unwrap())
        .collect();
    answers.iter().filter(|a| a.fallback).count() as f64 / answers.len() as f64
}

#[test]
fn valid_payloads_decode_and_invalid_ones_do_not() {
    let limits = DecodeLimits::default();
    let payloads: Vec<Payload> = Generator::new(config(Scenario::Steady, 0.1)).collect();
    assert_eq!(payloads.len(), 4_000);
    let mut invalid = 0;
    for p in &payloads {
        let ok = match p.topic {
            topics::RETRIEVAL => decode::<RetrievalEvent>(&p.bytes, &limits).is_ok(),
            _ => decode::<AnswerEvent>(&p.bytes, &limits).is_ok(),
        };
        assert_eq!(ok, p.valid, "{}", String::from_utf8_lossy(&p.bytes));
        invalid += usize::from(!p.valid);
    }
    assert!((300..500).contains(&invalid), "{invalid}");
}

#[test]
fn same_seed_same_stream() {
    let a: Vec<Vec<u8>> = Generator::new(config(Scenario::Steady, 0.05))
        .map(|p| p.bytes)
        .collect();
    let b: Vec<Vec<u8>> = Generator::new(config(Scenario::Steady, 0.05))
        .map(|p| p.bytes)
        .collect();
    assert_eq!(a, b);
}

#[test]
fn degradation_raises_fallback_for_chosen_tenants_only() {
    let scenario = Scenario::Degrade {
        at: 0.5,
        tenants: vec!["acme".into()],
    };
    let payloads: Vec<Payload> = Generator::new(config(scenario, 0.0)).collect();
    let half = payloads.len() / 2;
    let before = fallback_rate(&payloads[..half], "acme", 0);
    let after = fallback_rate(&payloads, "acme", half);
    let healthy = fallback_rate(&payloads, "globex", half);
    assert!(before < 0.15 && healthy < 0.15, "{before} {healthy}");
    assert!(after > 0.35, "{after}");
}

#[test]
fn cpf_check_digits_are_valid() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..100 {
        let digits: Vec<u32> = cpf(&mut rng)
            .chars()
            .filter_map(|c| c.to_digit(10))
            .collect();
        for len in [9usize, 10] {
            let sum: u32 = (0..len)
                .map(|i| digits[i] * (len as u32 + 1 - i as u32))
                .sum();
            let check = match sum % 11 {
                r if r < 2 => 0,
                r => 11 - r,
            };
            assert_eq!(digits[len], check);
        }
    }
}

#[test]
fn degrade_entity_lowers_the_ndcg_of_that_entity_only() {
    let entity = "Curitiba";
    let scenario = Scenario::DegradeEntity {
        at: 0.0,
        entity: entity.into(),
    };
    let limits = DecodeLimits::default();
    // Mean linear nDCG@10 of judged retrievals, for queries with / without the entity.
    let mean = |payloads: &[Payload], with: bool| {
        let scores: Vec<f64> = payloads
            .iter()
            .filter(|p| p.topic == topics::RETRIEVAL)
            .map(|p| decode::<RetrievalEvent>(&p.bytes, &limits).unwrap())
            .filter(|e| e.query.contains(entity) == with)
            .filter_map(|e| ndcg10(&e))
            .collect();
        assert!(scores.len() > 30, "{} events", scores.len());
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    let steady: Vec<Payload> = Generator::new(config(Scenario::Steady, 0.0)).collect();
    let degraded: Vec<Payload> = Generator::new(config(scenario, 0.0)).collect();
    assert_eq!(steady.len(), degraded.len());
    let (healthy, bad) = (mean(&degraded, false), mean(&degraded, true));
    // Measured: ≈ 0.999 and ≈ 0.81 (the same ranking noise as the tenant degradation).
    assert!(
        healthy > 0.95 && bad < 0.88,
        "others {healthy}, {entity} {bad}"
    );
    // Queries without the entity are byte-for-byte the steady stream's.
    for (a, b) in steady.iter().zip(&degraded) {
        if !String::from_utf8_lossy(&a.bytes).contains(entity) {
            assert_eq!(a.bytes, b.bytes);
        }
    }
    assert!(entities().any(|e| e == entity));
}

/// nDCG@10, linear gain, judgments from the event's list (as the windows stage scores it).
fn ndcg10(e: &RetrievalEvent) -> Option<f64> {
    let judgments = e.judgments.as_ref()?;
    let grade = |doc: &str| {
        judgments
            .iter()
            .find(|j| j.doc_id == doc)
            .map_or(0.0, |j| f64::from(j.rel))
    };
    let mut ranked: Vec<&RetrievalResult> = e.results.iter().collect();
    ranked.sort_by_key(|r| r.rank);
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, r)| grade(&r.doc_id) / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<f64> = judgments.iter().map(|j| f64::from(j.rel)).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, g)| g / (i as f64 + 2.0).log2())
        .sum();
    Some(if idcg > 0.0 { dcg / idcg } else { 0.0 })
}
