-- Entity-level retrieval quality: per tenant × entity, the mean per-event nDCG@k of the
-- retrievals that mention the entity and the fallback rate of the answers grounded on them,
-- worst first, over the last 7 days of event time in the `entities` table (edit the interval, or
-- replace the subquery with a fixed TIMESTAMP, for another range).
-- `aion sql @pipelines/entity_quality.sql`.
--
-- A retrieval counts once per entity however often it mentions it. `entities.ndcg` is the
-- retrieval's per-event nDCG (null when it carried no judgment: counted in `retrievals`, not
-- scored). Answers join by `shards.retrieval_event_id = entities.event_id`; entities whose
-- retrievals have no recorded answer have a null fallback rate. Ranked by mean nDCG ascending,
-- then fallback rate descending; entities with fewer than 5 judged retrievals come last.
WITH mentions AS (
    SELECT DISTINCT tenant_id, entity, "type", event_id, ndcg
    FROM entities
    WHERE ts >= (SELECT max(ts) FROM entities) - INTERVAL '7 days'
),
answers AS (
    SELECT tenant_id,
           retrieval_event_id,
           count(DISTINCT event_id) AS answers,
           count(DISTINCT CASE WHEN fallback THEN event_id END) AS fallbacks
    FROM shards
    WHERE retrieval_event_id IS NOT NULL
    GROUP BY tenant_id, retrieval_event_id
),
per_entity AS (
    SELECT m.tenant_id,
           m.entity,
           m."type",
           count(*) AS retrievals,
           count(m.ndcg) AS judged,
           avg(m.ndcg) AS mean_ndcg,
           coalesce(sum(a.answers), 0) AS answers,
           sum(a.fallbacks) AS fallbacks
    FROM mentions m
    LEFT JOIN answers a
           ON a.tenant_id = m.tenant_id AND a.retrieval_event_id = m.event_id
    GROUP BY m.tenant_id, m.entity, m."type"
)
SELECT tenant_id,
       entity,
       "type",
       retrievals,
       judged,
       mean_ndcg,
       answers,
       CASE WHEN answers > 0 THEN CAST(fallbacks AS DOUBLE) / answers END AS fallback_rate
FROM per_entity
ORDER BY CASE WHEN judged >= 5 THEN 0 ELSE 1 END,
         mean_ndcg ASC NULLS LAST,
         fallback_rate DESC NULLS LAST,
         tenant_id,
         entity
