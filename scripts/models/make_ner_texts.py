"""Writes the NER parity/benchmark text set: varied Brazilian Portuguese and English sentences with
names, e-mails, phones, cities, addresses and ids, and some with none. Deterministic (fixed seed).

usage: make_ner_texts.py > crates/aion-ner/data/texts.jsonl
"""
import json
import random

rng = random.Random(20261125)
GIVEN = ["João", "Maria", "Ana", "Pedro", "Lucas", "Beatriz", "Fernanda", "Rafael", "Camila", "Thiago",
         "John", "Emily", "Michael", "Sarah", "David", "Jessica", "Robert", "Olivia", "James", "Sophia"]
SURNAME = ["Silva", "Santos", "Oliveira", "Souza", "Pereira", "Costa", "Rodrigues", "Almeida", "Ferreira",
           "Carvalho", "Smith", "Johnson", "Williams", "Brown", "Miller", "Davis", "Wilson", "Taylor"]
CITY = ["São Paulo", "Rio de Janeiro", "Belo Horizonte", "Curitiba", "Porto Alegre", "Recife", "Salvador",
        "Fortaleza", "Campinas", "Florianópolis", "New York", "Chicago", "Boston", "Seattle", "Austin",
        "Denver", "London", "Lisbon"]
STREET = ["Rua das Flores", "Avenida Paulista", "Rua Augusta", "Avenida Atlântica", "Rua XV de Novembro",
          "Elm Street", "Main Street", "Oak Avenue", "Maple Drive", "Sunset Boulevard"]
DOMAIN = ["gmail.com", "empresa.com.br", "example.com", "uol.com.br", "acme.io", "outlook.com"]
TOPIC = ["o reembolso do pedido", "a segunda via do boleto", "o contrato de locação", "a fatura de outubro",
         "the refund for my order", "the invoice from October", "the lease agreement", "my account password"]
PLAIN = ["Como faço para alterar a senha da minha conta?", "Qual é o prazo de entrega para a região sul?",
         "O relatório trimestral está em anexo.", "Quais documentos preciso para abrir uma conta?",
         "How do I reset my password?", "What is the delivery time for international orders?",
         "The quarterly report is attached.", "Which plans include priority support?",
         "A política de devolução vale por 30 dias após a compra.", "Our API rate limit is 100 requests per minute.",
         "Obrigado pelo retorno 🙂", "Great, thanks! 👍", "Preciso de ajuda com a integração via webhook.",
         "The dashboard shows nDCG dropping since Monday."]


def person():
    return f"{rng.choice(GIVEN)} {rng.choice(SURNAME)}"


def email(name):
    user = name.lower().replace(" ", rng.choice([".", "_", ""]))
    user = user.translate(str.maketrans("ãáâéêíóôõúç", "aaaeeiooouc"))
    return f"{user}@{rng.choice(DOMAIN)}"


def phone_br():
    return f"({rng.randint(11, 99)}) 9{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"


def phone_us():
    return f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"


def cpf():
    d = [rng.randint(0, 9) for _ in range(9)]
    for n in (10, 11):
        s = sum(v * (n - i) for i, v in enumerate(d)) % 11
        d.append(0 if s < 2 else 11 - s)
    s = "".join(map(str, d))
    return f"{s[:3]}.{s[3:6]}.{s[6:9]}-{s[9:]}"


TEMPLATES = [
    lambda p: f"Olá, meu nome é {p} e moro em {rng.choice(CITY)}.",
    lambda p: f"Por favor, envie {rng.choice(TOPIC)} para {email(p)}.",
    lambda p: f"Pode ligar para {p} no número {phone_br()} amanhã de manhã?",
    lambda p: f"O cliente {p}, CPF {cpf()}, pediu {rng.choice(TOPIC)}.",
    lambda p: f"Endereço de entrega: {rng.choice(STREET)}, {rng.randint(1, 2000)}, apto {rng.randint(11, 99)}, {rng.choice(CITY)}.",
    lambda p: f"{p} escreveu: \"preciso de {rng.choice(TOPIC)} até sexta\" — responder em {email(p)}",
    lambda p: f"My name is {p} and my email is {email(p)}.",
    lambda p: f"Call {p} at {phone_us()} before Friday about {rng.choice(TOPIC)}.",
    lambda p: f"Ship it to {rng.randint(1, 999)} {rng.choice(STREET)}, {rng.choice(CITY)}, IL {rng.randint(10000, 99999)}.",
    lambda p: f"Hi, this is {p} from {rng.choice(CITY)}; I'm asking about {rng.choice(TOPIC)}.",
    lambda p: f"{p} ({email(p)}, {phone_us()}) moved to {rng.choice(CITY)} last year.",
    lambda p: f"Reunião com {p} e {person()} em {rng.choice(CITY)} na quarta-feira 🚀",
    lambda p: f"Please forward the ticket to {p}. Backup contact: {person()}, {phone_br()}.",
    lambda p: f"Meu e-mail mudou para {email(p)} e o telefone para {phone_br()}. Att, {p}",
]

texts = []
for i in range(280):
    texts.append(rng.choice(TEMPLATES)(person()))
texts += PLAIN
# Longer multi-sentence texts, as an enricher sample (query + top results) looks.
for i in range(26):
    parts = [rng.choice(TEMPLATES)(person()) for _ in range(rng.randint(4, 9))] + [rng.choice(PLAIN)]
    rng.shuffle(parts)
    texts.append("\n".join(parts))
for t in texts:
    print(json.dumps(t, ensure_ascii=False))
