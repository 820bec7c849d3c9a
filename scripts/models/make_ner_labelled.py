"""Writes the NER labelled set: Brazilian Portuguese and English sentences with planted names
(compound surnames included), cities, e-mails, phones, CPF and CNPJ (numeric and alphanumeric),
each with the gold word spans of its names and cities. Deterministic (fixed seed).

Gold entities are [type, start, end] in UTF-8 byte offsets: the given name (GIVEN_NAME), the whole
surname with its particles ("Moreira da Costa": one SURNAME) and the city (CITY).
Contacts and documents are planted for the redaction tests but carry no gold span.

usage: make_ner_labelled.py > crates/aion-ner/data/labelled.jsonl
"""
import json
import random

rng = random.Random(20261203)
GIVEN = ["Lucas", "Thiago", "Mariana", "Gabriela", "Rodrigo", "Letícia", "Gustavo", "Larissa", "Vinícius",
         "Juliana", "Henrique", "Patrícia", "Emma", "Noah", "Liam", "Charlotte", "Amelia", "Ethan",
         "Benjamin", "Harper", "Mason", "Evelyn", "Daniel", "Grace"]
SURNAME = ["Nascimento", "Whitaker", "Albuquerque", "da Silva", "dos Santos", "de Oliveira", "Cavalcanti",
           "Monteiro", "Barbosa", "Figueiredo", "Gonçalves", "Ribeiro", "Thompson", "Anderson", "Martinez",
           "Robinson", "Clarke", "Harrison", "Fitzgerald", "Sullivan", "Moreira da Costa", "Lima"]
CITY = ["Manaus", "Belém", "Goiânia", "Natal", "Maceió", "Vitória", "Londrina", "Joinville", "Niterói",
        "Santos", "Phoenix", "Portland", "Atlanta", "Dallas", "Miami", "Toronto", "Dublin", "Madrid"]
DOMAIN = ["gmail.com", "empresa.com.br", "example.org", "bol.com.br", "corp.io"]


def cpf():
    d = [rng.randrange(10) for _ in range(9)]
    for n in (9, 10):
        s = sum(d[i] * (n + 1 - i) for i in range(n)) % 11
        d.append(0 if s < 2 else 11 - s)
    s = "".join(map(str, d))
    return f"{s[:3]}.{s[3:6]}.{s[6:9]}-{s[9:]}"


def cnpj(alphanumeric):
    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" if alphanumeric else "0123456789"
    base = [rng.choice(chars) for _ in range(8)] + list("0001")
    values = [ord(c) - 48 for c in base]
    for n in (12, 13):
        s = sum(values[i] * (2 + (n - 1 - i) % 8) for i in range(n)) % 11
        values.append(0 if s < 2 else 11 - s)
    s = "".join(base) + "".join(str(v) for v in values[12:])
    return f"{s[:2]}.{s[2:5]}.{s[5:8]}/{s[8:12]}-{s[12:]}"


def phone():
    return rng.choice([f"({rng.randrange(11, 99)}) 9{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}",
                       f"+1 ({rng.randrange(200, 999)}) 555-{rng.randrange(1000, 9999)}"])


TEMPLATES = [
    "Cliente {name} pediu reembolso do pedido; CPF {cpf}.",
    "O atendente falou com {name} em {city} sobre a fatura.",
    "Hi, I'm {name} from {city}. My email is {email}.",
    "Please call {name} at {phone} about the invoice.",
    "A empresa de {name}, CNPJ {cnpj}, fica em {city}.",
    "Customer {name} ({email}) asked to cancel the order.",
    "{name} mora em {city} e o telefone é {phone}.",
    "Contrato assinado por {name}, CNPJ {cnpja}, com sede em {city}.",
    "Dear {name}, your refund was approved.",
    "Segundo {name}, o boleto não chegou; e-mail {email}.",
]


def main():
    for i in range(320):
        given = rng.choice(GIVEN)
        surname = rng.choice(SURNAME)
        name = f"{given} {surname}"
        city = rng.choice(CITY)
        user = given.lower().encode("ascii", "ignore").decode() + "." + surname.split()[-1].lower().encode("ascii", "ignore").decode()
        fields = {"name": name, "city": city, "cpf": cpf(), "cnpj": cnpj(False), "cnpja": cnpj(True),
                  "phone": phone(), "email": f"{user}@{rng.choice(DOMAIN)}"}
        template = TEMPLATES[i % len(TEMPLATES)]
        text = template.format(**fields)
        gold = []

        def words(value, kind, at):
            start = len(text[:at].encode())
            gold.append([kind, start, start + len(value.encode())])

        at = text.index(name)
        words(given, "GIVEN_NAME", at)
        words(surname, "SURNAME", at + len(given) + 1)
        if "{city}" in template:
            words(city, "CITY", text.index(city, at + len(name)) if city in text[at + len(name):] else text.index(city))
        print(json.dumps({"text": text, "entities": sorted(gold, key=lambda g: g[1])}, ensure_ascii=False))


if __name__ == "__main__":
    main()
