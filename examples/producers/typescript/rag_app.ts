// What a TypeScript RAG application adds to publish its traffic to AION Stream
// (@platformatic/kafka, a maintained pure-JavaScript Kafka client).
//
// Two events per request: `retrieval.v1` after the retriever ranked its passages, `answer.v1`
// after the reply (with whether it fell back to an external LLM). Keys are the tenant id, so a
// tenant's events stay in order on one partition and meet in one windows-stage member. Event ids
// make a retried publish harmless; the producer is idempotent and waits for all replicas.
//
//   npm install && npm start -- --brokers localhost:9092 --tenant acme
import { randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import { ProduceAcks, Producer, stringSerializers } from '@platformatic/kafka'

type Ranked = { docId: string; text: string; score: number }

const now = () => new Date().toISOString()

function producer(brokers: string[]) {
  return new Producer({
    clientId: 'rag-app',
    bootstrapBrokers: brokers,
    serializers: stringSerializers,
    idempotent: true, // retries never duplicate or reorder
    acks: ProduceAcks.ALL,
    compression: 'gzip'
    // A secured cluster: tls: { ca }, sasl: { mechanism: 'SCRAM-SHA-512', username, password }
  })
}

async function publish(p: Producer<string, string, string, string>, topic: string, event: { tenant_id: string }) {
  await p.send({ messages: [{ topic, key: event.tenant_id, value: JSON.stringify(event) }] })
}

/** `judgments`: graded relevance 0..3 per doc id, when known. */
async function onRetrieval(
  p: Producer<string, string, string, string>,
  tenant: string,
  query: string,
  ranked: Ranked[],
  judgments?: Record<string, number>
): Promise<string> {
  const event = {
    event_id: `r-${randomUUID()}`,
    tenant_id: tenant,
    ts: now(),
    query,
    results: ranked.map((r, i) => ({ doc_id: r.docId, rank: i + 1, text: r.text, score: r.score })),
    ...(judgments && { judgments: Object.entries(judgments).map(([doc_id, rel]) => ({ doc_id, rel })) })
  }
  await publish(p, 'retrieval.v1', event)
  return event.event_id
}

async function onAnswer(
  p: Producer<string, string, string, string>,
  tenant: string,
  a: { prompt: string; reply: string; confidence: number; fallback: boolean; model: string; latencyMs: number; retrievalId: string }
) {
  await publish(p, 'answer.v1', {
    event_id: `a-${randomUUID()}`,
    tenant_id: tenant,
    ts: now(),
    prompt: a.prompt,
    reply: a.reply,
    confidence: a.confidence,
    fallback: a.fallback,
    provider: a.fallback ? 'external' : 'local',
    model: a.model,
    latency_ms: a.latencyMs,
    retrieval_event_id: a.retrievalId
  })
}

const { values } = parseArgs({
  options: {
    brokers: { type: 'string', default: 'localhost:9092' },
    tenant: { type: 'string', default: 'acme' },
    requests: { type: 'string', default: '1' }
  }
})
const p = producer(values.brokers!.split(','))
const requests = Number(values.requests)
try {
  for (let i = 0; i < requests; i++) {
    const question = 'How long does delivery to Lisbon take?'
    const retrievalId = await onRetrieval(
      p,
      values.tenant!,
      question,
      [
        { docId: 'kb-17#3', text: 'Deliveries to Lisbon take two working days.', score: 0.91 },
        { docId: 'kb-02#1', text: 'Acme ships to every EU country.', score: 0.77 }
      ],
      { 'kb-17#3': 3, 'kb-02#1': 1 }
    )
    await onAnswer(p, values.tenant!, {
      prompt: question,
      reply: 'Two working days.',
      confidence: 0.86,
      fallback: i % 5 === 0,
      model: 'smollm2-135m-instruct',
      latencyMs: 412,
      retrievalId
    })
  }
  console.log(`published ${requests} retrieval and ${requests} answer events for ${values.tenant}`)
} finally {
  await p.close()
}
