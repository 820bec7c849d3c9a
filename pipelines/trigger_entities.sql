-- The worst entities of a degraded window, recorded in its train.trigger.v1 event
-- (`top_entities`, worst first): the gate runs this over the `entities` table the shard stage
-- writes, for the tenant ($1) and the window's event-time range [$2, $3) (`date` in [$4, $5]
-- prunes the day directories). Ranked as pipelines/entity_quality.sql ranks them — mean per-event
-- nDCG ascending, a retrieval counted once per entity whatever its types — among entities with at least $6 judged
-- retrievals; the gate keeps the first `top_entities.limit` rows.
WITH mentions AS (
    SELECT DISTINCT entity, event_id, ndcg
    FROM entities
    WHERE tenant_id = $1 AND ts >= $2 AND ts < $3 AND date >= $4 AND date <= $5
)
SELECT entity, count(ndcg) AS judged, avg(ndcg) AS mean_ndcg
FROM mentions
GROUP BY entity
HAVING count(ndcg) >= $6
ORDER BY mean_ndcg ASC, judged DESC, entity
