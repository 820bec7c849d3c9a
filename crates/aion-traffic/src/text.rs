//! Vocabulary and templates. Portuguese and English in equal measure; every query names at least
//! one entity (person, company, place or product) and some carry personal data (e-mail, CPF).

use rand::{rngs::StdRng, Rng};

const PEOPLE: &[&str] = &[
    "Ana Souza",
    "João Pereira",
    "Maria Oliveira",
    "Carlos Lima",
    "Fernanda Rocha",
    "Rafael Costa",
    "Jane Doe",
    "John Smith",
    "Emily Clark",
    "Michael Brown",
    "Priya Patel",
    "Lucas Almeida",
];
const COMPANIES: &[&str] = &[
    "Acme Logística",
    "Banco Horizonte",
    "TechNova",
    "Globex",
    "Initech",
    "Construtora Alvorada",
    "Mercado Sol",
    "Umbrella Health",
];
const PLACES: &[&str] = &[
    "São Paulo",
    "Rio de Janeiro",
    "Belo Horizonte",
    "Curitiba",
    "Recife",
    "Porto Alegre",
    "Lisbon",
    "New York",
    "London",
    "Chicago",
];
const PRODUCTS: &[&str] = &[
    "Plano Premium",
    "cartão Platinum",
    "Router X200",
    "SmartWatch Pro",
    "conta digital",
    "seguro auto",
    "Cloud Backup",
    "Fibra 500 Mega",
];

/// The people the generated queries name (what the shard stage must redact).
pub fn people() -> impl Iterator<Item = &'static str> {
    PEOPLE.iter().copied()
}

/// Every person, company, place and product the generated queries mention.
pub fn entities() -> impl Iterator<Item = &'static str> {
    [PEOPLE, COMPANIES, PLACES, PRODUCTS]
        .into_iter()
        .flatten()
        .copied()
}

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// A CPF-like number with valid check digits, formatted `000.000.000-00`.
pub fn cpf(rng: &mut impl Rng) -> String {
    let mut d: Vec<u32> = (0..9).map(|_| rng.random_range(0..10)).collect();
    for len in [9usize, 10] {
        let sum: u32 = d
            .iter()
            .enumerate()
            .map(|(i, &x)| x * (len as u32 + 1 - i as u32))
            .sum();
        let r = sum % 11;
        d.push(if r < 2 { 0 } else { 11 - r });
    }
    let s: String = d
        .iter()
        .map(|x| char::from_digit(*x, 10).unwrap_or('0'))
        .collect();
    format!("{}.{}.{}-{}", &s[0..3], &s[3..6], &s[6..9], &s[9..11])
}

fn email(rng: &mut StdRng, person: &str) -> String {
    let slug: String = person
        .to_lowercase()
        .replace(' ', ".")
        .chars()
        .map(|c| match c {
            'ã' | 'á' | 'â' => 'a',
            'é' | 'ê' => 'e',
            'í' => 'i',
            'ó' | 'ô' => 'o',
            'ú' => 'u',
            'ç' => 'c',
            c => c,
        })
        .collect();
    let domain = pick(
        rng,
        &[
            "example.com",
            "mail.com.br",
            "empresa.com.br",
            "corp.example.org",
        ],
    );
    format!("{slug}@{domain}")
}

/// The subject of one interaction: its language and the entities it mentions.
pub struct Topic {
    portuguese: bool,
    person: &'static str,
    company: &'static str,
    place: &'static str,
    product: &'static str,
    kind: u8,
}

impl Topic {
    pub fn pick(rng: &mut StdRng) -> Self {
        Self {
            portuguese: rng.random_bool(0.5),
            person: pick(rng, PEOPLE),
            company: pick(rng, COMPANIES),
            place: pick(rng, PLACES),
            product: pick(rng, PRODUCTS),
            kind: rng.random_range(0..5),
        }
    }

    /// A short id part for documents about this topic's company.
    pub fn slug(&self) -> String {
        self.company
            .split_whitespace()
            .next()
            .unwrap_or("kb")
            .to_lowercase()
    }

    pub fn query(&self, rng: &mut StdRng) -> String {
        let (p, c, l, x) = (self.person, self.company, self.place, self.product);
        match (self.portuguese, self.kind) {
            (true, 0) => format!("Qual o prazo de entrega do {x} para {l}?"),
            (true, 1) => format!("Como cancelar o {x} da {c}?"),
            (true, 2) => format!("{p} pediu reembolso do {x} comprado em {l}, qual o status?"),
            (true, 3) => format!("Atualizar o e-mail de {p} para {} na {c}", email(rng, p)),
            (true, _) => format!(
                "O CPF {} de {p} está vinculado a qual conta na {c}?",
                cpf(rng)
            ),
            (false, 0) => format!("What is the delivery time for the {x} to {l}?"),
            (false, 1) => format!("How do I cancel my {x} with {c}?"),
            (false, 2) => format!("Refund status for {p}, {x} bought in {l}"),
            (false, 3) => format!(
                "Change the contact email of {p} to {} at {c}",
                email(rng, p)
            ),
            (false, _) => format!(
                "Which {c} account is tied to {p}, phone +1 (312) 555-{:04}?",
                rng.random_range(0..10000)
            ),
        }
    }

    /// A passage; higher grades talk about the query's entities, grade 0 about something else.
    pub fn passage(&self, rng: &mut StdRng, grade: u8) -> String {
        let (c, l, x) = (self.company, self.place, self.product);
        let other = pick(rng, PRODUCTS);
        match (self.portuguese, grade) {
            (true, 3) => format!("A {c} entrega o {x} em {l} em até {} dias úteis; cancelamentos e reembolsos são feitos pelo aplicativo ou pela central de atendimento.", rng.random_range(1..8)),
            (true, 2) => format!("O {x} da {c} tem cobertura em {l}. Reembolsos são processados em até 7 dias após a solicitação."),
            (true, 1) => format!("A {c} atende clientes em todo o Brasil, incluindo {l}."),
            (true, _) => format!("Conheça o {other}: condições especiais para novos clientes neste mês."),
            (false, 3) => format!("{c} ships the {x} to {l} within {} business days; cancellations and refunds are handled in the app or by the support desk.", rng.random_range(1..8)),
            (false, 2) => format!("The {x} from {c} is available in {l}. Refunds are processed within 7 days of the request."),
            (false, 1) => format!("{c} serves customers across the country, including {l}."),
            (false, _) => format!("Discover the {other}: special offers for new customers this month."),
        }
    }

    /// A support-case note about this topic's person, with their contact data: what a knowledge
    /// base built from tickets holds.
    pub fn note(&self, rng: &mut StdRng) -> String {
        let (p, c, x) = (self.person, self.company, self.product);
        let ticket = rng.random_range(10_000..100_000);
        if self.portuguese {
            format!(
                "Chamado {ticket}: {p} (e-mail {}, CPF {}) pediu à {c} a troca do {x}; o atendente confirmou o pedido por telefone.",
                email(rng, p),
                cpf(rng)
            )
        } else {
            format!(
                "Ticket {ticket}: {p} ({}, phone +1 (312) 555-{:04}) asked {c} to replace the {x}; support confirmed the request by phone.",
                email(rng, p),
                rng.random_range(0..10000)
            )
        }
    }

    pub fn reply(&self, rng: &mut StdRng) -> String {
        let (c, l, x) = (self.company, self.place, self.product);
        let days = rng.random_range(1..8);
        if self.portuguese {
            format!("Segundo a {c}, o {x} chega a {l} em até {days} dias úteis. Para cancelar ou pedir reembolso, use o aplicativo.")
        } else {
            format!("According to {c}, the {x} reaches {l} within {days} business days. To cancel or request a refund, use the app.")
        }
    }
}

/// Breaks a valid payload in one of the ways the dead-letter contract covers.
pub fn corrupt(bytes: &mut Vec<u8>, rng: &mut StdRng) {
    let text = String::from_utf8_lossy(bytes).into_owned();
    *bytes = match rng.random_range(0..6) {
        0 => bytes[..bytes.len() / 2].to_vec(),
        1 => text
            .replacen("\"tenant_id\":\"", "\"tenant_id\":\"../", 1)
            .into_bytes(),
        2 => text
            .replacen("\"ts\":\"", "\"ts\":\"not-a-", 1)
            .into_bytes(),
        3 => {
            let mut b = bytes.clone();
            let at = b.len() / 3;
            b[at] = 0xff;
            b
        }
        4 => text
            .replacen("\"tenant_id\":", "\"tenant\":", 1)
            .into_bytes(),
        _ => text
            .replacen("\"event_id\":\"", "\"event_id\":\"\u{1}", 1)
            .into_bytes(),
    };
}
