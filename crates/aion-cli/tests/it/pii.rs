//! Planted personal data through the real broker: names (in the query, the retrieved passage, the
//! prompt and the reply), e-mails, phones, CPF, numeric and alphanumeric CNPJ and card numbers go
//! in; every text cell of every table (`shards`, `entities`, `labels`, `label_queue`), read back
//! by DuckDB, is searched for them. With the enricher running, and with it stopped (the shard
//! stage must not depend on it).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::Stack;

const GIVEN: [&str; 10] = [
    "Thiago",
    "Larissa",
    "Gustavo",
    "Juliana",
    "Rodrigo",
    "Beatriz",
    "Oliver",
    "Charlotte",
    "Henry",
    "Amelia",
];
const SURNAMES: [&str; 10] = [
    "Nascimento",
    "Whitaker",
    "Albuquerque",
    "da Silva",
    "Cavalcanti",
    "Figueiredo",
    "Thompson",
    "Harrison",
    "Gonçalves",
    "Fitzgerald",
];

fn check_digit(sum: u32) -> u32 {
    if sum % 11 < 2 {
        0
    } else {
        11 - sum % 11
    }
}

fn cpf(i: u32) -> String {
    let mut d: Vec<u32> = format!("{:09}", 123_456_789 - i * 7919)
        .chars()
        .map(|c| c.to_digit(10).unwrap())
        .collect();
    for n in [9usize, 10] {
        let sum = (0..n).map(|k| d[k] * (n as u32 + 1 - k as u32)).sum();
        d.push(check_digit(sum));
    }
    let s: String = d.iter().map(|x| x.to_string()).collect();
    format!("{}.{}.{}-{}", &s[..3], &s[3..6], &s[6..9], &s[9..])
}

/// A CNPJ from 12 base characters (digits, or upper-case letters too: the 2026 format).
fn cnpj(base: &str) -> String {
    let mut v: Vec<u32> = base.chars().map(|c| c as u32 - 48).collect();
    for n in [12usize, 13] {
        let sum = (0..n).map(|k| v[k] * (2 + (n - 1 - k) as u32 % 8)).sum();
        v.push(check_digit(sum));
    }
    format!(
        "{}.{}.{}/{}-{}{}",
        &base[..2],
        &base[2..5],
        &base[5..8],
        &base[8..12],
        v[12],
        v[13]
    )
}

/// A Luhn-valid 16-digit card number, grouped by four.
fn card(i: u32) -> String {
    let mut d: Vec<u32> = format!("4539{:011}", 10_000_000_000u64 + u64::from(i) * 104_729)
        .chars()
        .map(|c| c.to_digit(10).unwrap())
        .collect();
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &x)| match (k % 2, x * 2) {
            (0, y) if y > 9 => y - 9,
            (0, y) => y,
            _ => x,
        })
        .sum();
    d.push((10 - sum % 10) % 10);
    let s: String = d.iter().map(|x| x.to_string()).collect();
    format!("{} {} {} {}", &s[..4], &s[4..8], &s[8..12], &s[12..])
}

struct Planted {
    events: Vec<(&'static str, String, Value)>,
    /// Every planted string a table must not hold (names word by word).
    secrets: BTreeSet<String>,
}

fn plant(n: u32) -> Planted {
    let mut events = Vec::new();
    let mut secrets = BTreeSet::new();
    for i in 0..n {
        let a = format!(
            "{} {}",
            GIVEN[i as usize % 10],
            SURNAMES[(i as usize * 3) % 10]
        );
        let b = format!(
            "{} {}",
            GIVEN[(i as usize + 5) % 10],
            SURNAMES[(i as usize * 7 + 1) % 10]
        );
        let user = GIVEN[i as usize % 10].to_lowercase();
        let email = format!("{user}.{i}@cliente-exemplo.com.br");
        let phone = format!("(11) 9{:04}-{:04}", 1000 + i * 37, 2000 + i * 53);
        let (cpf, card) = (cpf(i), card(i));
        let cnpj_numeric = cnpj(&format!("{:08}0001", 40_000_000 + i * 977));
        let cnpj_alpha = cnpj(&format!("{:02}AB{:03}CD{:03}", 10 + i, 100 + i, i));
        let (r, a_id) = (format!("r-{i}"), format!("a-{i}"));
        let ts = format!("2026-11-02T{:02}:{:02}:00Z", 8 + i / 60, i % 60);
        events.push((
            aion_events::topics::RETRIEVAL,
            r.clone(),
            json!({"event_id": r, "tenant_id": "acme", "ts": ts,
                   "query": format!("Cliente {a} pediu reembolso; e-mail {email}"),
                   "results": [{"doc_id": "kb-1", "rank": 1, "score": 0.9, "rel": 2,
                                "text": format!("O contrato de {b} foi assinado em Curitiba.")}]}),
        ));
        events.push((
            aion_events::topics::ANSWER,
            a_id.clone(),
            json!({"event_id": a_id, "tenant_id": "acme", "ts": ts,
                   "prompt": format!("{a} pergunta sobre a empresa {cnpj_numeric} e o cartão {card}"),
                   "reply": format!("Olá {a}, {b} confirmou o CPF {cpf}, o telefone {phone} e a filial {cnpj_alpha}."),
                   "confidence": 0.3 + f64::from(i % 5) / 10.0, "fallback": i % 3 == 0,
                   "provider": "local", "model": "m", "latency_ms": 120, "retrieval_event_id": r}),
        ));
        events.push((
            aion_events::topics::LABELS,
            format!("l-{i}"),
            json!({"event_id": format!("r-{i}"), "tenant_id": "acme", "labelled_at": ts,
                   "labeller": "ana", "query": format!("Cliente {a} pediu reembolso; e-mail {email}"),
                   "judgments": [{"doc_id": "kb-1", "rel": 2}]}),
        ));
        for name in [&a, &b] {
            for word in name.split(' ').filter(|w| w.len() > 3) {
                secrets.insert(word.to_lowercase());
            }
        }
        secrets.extend([email, phone, cpf, card, cnpj_numeric, cnpj_alpha]);
    }
    Planted { events, secrets }
}

fn wait_for(what: &str, s: &Stack, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
}

async fn no_planted_pii_in_any_table(enricher: bool) {
    const N: u32 = 30;
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "2"]);
    let planted = plant(N);
    s.publish(planted.events.iter().map(|(topic, key, event)| {
        (
            topic.to_string(),
            key.clone(),
            event.to_string().into_bytes(),
        )
    }))
    .await;

    let state = s.state.path();
    let enrich = enricher.then(|| s.spawn(&["enrich", "run"], "enrich.log"));
    let mut shard_args = vec!["shards", "run", "--max-age-secs", "1"];
    if !enricher {
        shard_args.push("--no-entities");
    }
    let shards = s.spawn(&shard_args, "shards.log");
    wait_for("every answer written", &s, || {
        s.table_rows("shards") == N as usize
    });
    wait_for("every label written", &s, || {
        s.table_rows("labels") == N as usize
    });
    if enricher {
        wait_for("every enriched retrieval written", &s, || {
            aion_shards::read_manifest(&state.join("entities")).is_ok_and(|m| {
                m.iter()
                    .map(|e| e.last_offset - e.first_offset + 1)
                    .sum::<i64>()
                    >= i64::from(N)
            })
        });
    }
    assert!(shards.terminate(), "clean stop\n{}", s.logs());
    if let Some(enrich) = enrich {
        assert!(enrich.terminate(), "clean stop\n{}", s.logs());
    }
    s.run(&[
        "label-queue",
        "--tenant",
        "acme",
        "--tau",
        "0.5",
        "--limit",
        "10",
    ]);

    let mut tables = vec!["shards", "labels", "label_queue"];
    if enricher {
        tables.push("entities");
    }
    let out = std::process::Command::new(aion_broker::cache_dir().join("venv/bin/python"))
        .arg(crate::repo_file("scripts/checks/pii_dump.py"))
        .arg(state)
        .args(&tables)
        .output()
        .unwrap();
    crate::succeeded(&out);
    let cells: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for table in &tables {
        assert!(
            cells
                .iter()
                .any(|c| c["table"] == *table && c["value"].is_string()),
            "{table} has text cells"
        );
    }
    let word = |w: &str| regex::Regex::new(&format!(r"(?i)\b{}\b", regex::escape(w))).unwrap();
    let secrets: Vec<(&String, regex::Regex)> =
        planted.secrets.iter().map(|s| (s, word(s))).collect();
    let mut leaks = BTreeSet::new();
    for cell in &cells {
        let Some(value) = cell["value"].as_str() else {
            continue;
        };
        for (secret, re) in &secrets {
            if re.is_match(value) {
                leaks.insert(format!(
                    "{secret:?} in {}.{}: {value:?}",
                    cell["table"], cell["column"]
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaks of {} planted values:\n{}",
        leaks.len(),
        planted.secrets.len(),
        leaks.into_iter().collect::<Vec<_>>().join("\n")
    );
    // Redaction left its placeholders, so the rows still read as sentences.
    let shards: Vec<&str> = cells
        .iter()
        .filter(|c| c["table"] == "shards")
        .filter_map(|c| c["value"].as_str())
        .collect();
    for placeholder in ["<PERSON>", "<CPF>", "<CNPJ>", "<CARD>", "<PHONE>"] {
        assert!(
            shards.iter().any(|v| v.contains(placeholder)),
            "{placeholder}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_planted_pii_in_any_table_with_the_enricher_running() {
    no_planted_pii_in_any_table(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_planted_pii_in_any_table_with_the_enricher_stopped() {
    no_planted_pii_in_any_table(false).await;
}
