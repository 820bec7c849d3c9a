-- Quality aggregates of closed windows, one row per tenant x window kind x window start.
--
-- Input `window_events`: one row per (event, window it counts in) with columns
--   tenant_id, window, window_start, window_end  (the window; UTC timestamps)
--   kind        'retrieval' | 'answer'
--   ts          event time
--   ndcg        per-event nDCG@k of a judged retrieval event, else NULL
--   fallback    answers: whether it fell back to the external LLM, else NULL
--   confidence  answers: the local model's confidence, else NULL
-- The stream runs this over the windows that just closed; an analyst runs it over the Parquet
-- history with `window_events` defined by window_events.sql.
--
-- The output must keep the metrics.v1 columns (names and meaning, see
-- schemas/metrics.v1.schema.json); extra columns go to the Parquet table only.
SELECT
    tenant_id,
    "window",
    window_start,
    window_end,
    count(*) FILTER (WHERE kind = 'retrieval')                   AS retrieval_events,
    count(ndcg)                                                  AS judged_events,
    avg(ndcg)                                                    AS ndcg_mean,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY ndcg)            AS ndcg_p50,
    percentile_cont(0.1) WITHIN GROUP (ORDER BY ndcg)            AS ndcg_p10,
    count(*) FILTER (WHERE kind = 'answer')                      AS answers,
    count(*) FILTER (WHERE fallback)                             AS fallbacks,
    CAST(count(*) FILTER (WHERE fallback) AS DOUBLE)
        / nullif(count(*) FILTER (WHERE kind = 'answer'), 0)    AS fallback_rate,
    avg(confidence)                                              AS confidence_mean
FROM window_events
GROUP BY tenant_id, "window", window_start, window_end
ORDER BY tenant_id, "window", window_start
