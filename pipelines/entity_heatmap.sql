-- The entity heatmap: mentions per tenant × entity × hour, from the `entities` table the shard
-- stage writes (one row per top term of each enriched retrieval event; with redaction on, names
-- and contacts appear as their placeholders). `aion sql @pipelines/entity_heatmap.sql`.
SELECT tenant_id,
       entity,
       "type",
       date_trunc('hour', ts) AS hour,
       count(*) AS mentions,
       sum(score) AS weight
FROM entities
GROUP BY tenant_id, entity, "type", date_trunc('hour', ts)
ORDER BY tenant_id, hour, mentions DESC, entity
