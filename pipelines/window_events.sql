-- The input of windows.sql rebuilt from the Parquet history, for analysts: `aion sql` registers
-- the table `window_history` (each counted event once, with the watermark it arrived at) and this
-- view, so `aion sql @pipelines/windows.sql` recomputes what the stream published.
--
-- It mirrors the windows of windows.toml (tumbling 1 h, tumbling 1 d, hopping 24 h every 1 h); edit
-- both together. An event counts in a window only if it arrived before the watermark passed the
-- window's end (arrived_at < window_end), exactly as in the stream.
CREATE VIEW window_events AS
WITH e AS (
    SELECT tenant_id, kind, ts, ndcg, fallback, confidence, arrived_at,
           date_trunc('hour', ts) AS hour, date_trunc('day', ts) AS day
    FROM window_history
),
w AS (
    SELECT tenant_id, kind, ts, ndcg, fallback, confidence, arrived_at,
           'tumbling_1h' AS "window", hour AS window_start, hour + INTERVAL '1 hour' AS window_end
    FROM e
    UNION ALL
    SELECT tenant_id, kind, ts, ndcg, fallback, confidence, arrived_at,
           'tumbling_1d', day, day + INTERVAL '1 day'
    FROM e
    UNION ALL
    -- The 24 hourly hops containing the event's hour end 1..24 hours after it starts.
    SELECT tenant_id, kind, ts, ndcg, fallback, confidence, arrived_at,
           'hopping_24h', hop_end - INTERVAL '24 hours', hop_end
    FROM (
        SELECT *, arrow_cast(end_ns, 'Timestamp(Microsecond, Some("UTC"))') AS hop_end
        FROM (
            SELECT e.*, unnest(generate_series(hour + INTERVAL '1 hour', hour + INTERVAL '24 hours',
                                               INTERVAL '1 hour')) AS end_ns
            FROM e
        )
    )
)
SELECT tenant_id, "window", window_start, window_end, kind, ts, ndcg, fallback, confidence
FROM w
WHERE arrived_at IS NULL OR arrived_at < window_end
