"""What a RAG application adds to publish its traffic to AION Stream (confluent-kafka).

Two events per request: `retrieval.v1` after the retriever ranked its passages, `answer.v1` after
the reply (with whether it fell back to an external LLM). Keys are the tenant id, so a tenant's
events stay in order on one partition and meet in one windows-stage member. Event ids make a
retried publish harmless; the producer is idempotent and waits for all replicas.

    pip install confluent-kafka
    python python_rag_app.py --brokers localhost:9092 --tenant acme
"""

import argparse
import json
import uuid
from datetime import datetime, timezone

from confluent_kafka import Producer


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def producer(brokers, extra=None):
    config = {
        "bootstrap.servers": brokers,
        "enable.idempotence": True,  # retries never duplicate or reorder
        "acks": "all",
        "compression.type": "zstd",
        "linger.ms": 20,
    }
    config.update(extra or {})  # e.g. security.protocol, sasl.* for a secured cluster
    return Producer(config)


def publish(p, topic, event):
    def delivered(err, msg):
        if err is not None:  # log it; the event id lets the app publish it again safely
            print(f"not delivered to {topic}: {err}")

    p.produce(topic, key=event["tenant_id"], value=json.dumps(event).encode(), on_delivery=delivered)
    p.poll(0)


def on_retrieval(p, tenant, query, ranked, judgments=None):
    """`ranked`: (doc_id, text, score) best first; `judgments`: {doc_id: 0..3} when known."""
    event = {
        "event_id": f"r-{uuid.uuid4()}",
        "tenant_id": tenant,
        "ts": now(),
        "query": query,
        "results": [
            {"doc_id": d, "rank": i + 1, "text": t, "score": s} for i, (d, t, s) in enumerate(ranked)
        ],
    }
    if judgments:
        event["judgments"] = [{"doc_id": d, "rel": r} for d, r in judgments.items()]
    publish(p, "retrieval.v1", event)
    return event["event_id"]


def on_answer(p, tenant, prompt, reply, confidence, fallback, model, latency_ms, retrieval_id):
    event = {
        "event_id": f"a-{uuid.uuid4()}",
        "tenant_id": tenant,
        "ts": now(),
        "prompt": prompt,
        "reply": reply,
        "confidence": confidence,
        "fallback": fallback,
        "provider": "external" if fallback else "local",
        "model": model,
        "latency_ms": latency_ms,
        "retrieval_event_id": retrieval_id,
    }
    publish(p, "answer.v1", event)


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--brokers", default="localhost:9092")
    args.add_argument("--tenant", default="acme")
    args.add_argument("--requests", type=int, default=1)
    args.add_argument("--config", default="{}", help="extra librdkafka properties, as JSON")
    a = args.parse_args()
    p = producer(a.brokers, json.loads(a.config))
    for i in range(a.requests):
        rid = on_retrieval(
            p,
            a.tenant,
            "How long does delivery to Lisbon take?",
            [("kb-17#3", "Deliveries to Lisbon take two working days.", 0.91),
             ("kb-02#1", "Acme ships to every EU country.", 0.77)],
            judgments={"kb-17#3": 3, "kb-02#1": 1},
        )
        on_answer(p, a.tenant, "How long does delivery to Lisbon take?",
                  "Two working days.", 0.86, i % 5 == 0, "smollm2-135m-instruct", 412, rid)
    left = p.flush(30)
    if left:
        raise SystemExit(f"{left} events not delivered")
    print(f"published {a.requests} retrieval and {a.requests} answer events for {a.tenant}")


if __name__ == "__main__":
    main()
