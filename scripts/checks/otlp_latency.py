"""Receives the local broker's OTLP metrics and reports its request latencies per kind of request.

Nisshi pushes metrics over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; it has
no scrape endpoint. Three of its histograms (milliseconds) say how long requests wait:
- `nisshi_request_duration`: every Kafka request, decode to encoded response (long-poll waits such
  as a Fetch's `fetch.wait.max.ms` included). Its only attribute is the cluster id: the broker's
  latency over all kinds of request.
- `nisshi_storage_proxy_semaphore_acquire_duration{operation}`: how long a request of each kind
  (produce, fetch, metadata, offset_commit, ...) queued for the storage, which serves one at a time.
- `nisshi_sqlite_delegate_request_duration{operation}`: the SQLite storage's time per kind.

For each series: the count, the p50 and p99 (the upper bound of the bucket that holds them, capped
by the largest value) and the largest value the broker recorded. Runs until SIGINT/SIGTERM, then
prints a Markdown table (and the names of every histogram received) and writes the rows as JSON
to --out.

usage: otlp_latency.py [--port 4318] [--out FILE]
then:  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \\
       OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta OTEL_METRIC_EXPORT_INTERVAL=5000 \\
       aion up --events 200000
(the broker `aion up` starts inherits the environment).
"""
import argparse
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

METRICS = (
    "nisshi_request_duration",
    "nisshi_storage_proxy_semaphore_acquire_duration",
    "nisshi_sqlite_delegate_request_duration",
)

lock = threading.Lock()
series = {}  # (metric, label) -> {"bounds", "buckets", "count", "max", "exports"}
seen_histograms = set()


def label(point):
    attrs = {a.key: a.value.string_value or str(a.value.int_value) for a in point.attributes}
    return attrs.get("operation", "all requests")


def record(request):
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.HasField("histogram"):
                    seen_histograms.add(metric.name)
                if metric.name not in METRICS or not metric.HasField("histogram"):
                    continue
                delta = metric.histogram.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
                for p in metric.histogram.data_points:
                    key = (metric.name, label(p))
                    with lock:
                        s = series.setdefault(key, {"bounds": list(p.explicit_bounds), "buckets": [0] * len(p.bucket_counts), "count": 0, "max": 0.0, "exports": 0})
                        if delta:
                            s["buckets"] = [a + b for a, b in zip(s["buckets"], p.bucket_counts)]
                            s["count"] += p.count
                        else:  # cumulative: the latest export holds everything so far
                            s["buckets"] = list(p.bucket_counts)
                            s["count"] = p.count
                        if p.HasField("max"):
                            s["max"] = max(s["max"], p.max)
                        s["exports"] += 1


def quantile(s, q):
    """The upper bound of the bucket holding quantile q, capped by the largest value seen."""
    if s["count"] == 0:
        return 0.0
    target, seen = q * s["count"], 0
    for i, c in enumerate(s["buckets"]):
        seen += c
        if seen >= target:
            return min(s["bounds"][i], s["max"]) if i < len(s["bounds"]) else s["max"]
    return s["max"]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        record(request)
        out = ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def report(path):
    rows = []
    with lock:
        for (metric, name), s in sorted(series.items()):
            rows.append({"metric": metric, "series": name, "count": s["count"], "p50_ms": quantile(s, 0.5), "p99_ms": quantile(s, 0.99), "max_ms": s["max"], "exports": s["exports"]})
    print("| histogram | series | requests | p50 (ms, bucket bound) | p99 (ms, bucket bound) | max (ms) |")
    print("|---|---|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['metric']} | {r['series']} | {r['count']:,} | {r['p50_ms']:g} | {r['p99_ms']:g} | {r['max_ms']:g} |")
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)
    print("histograms the broker sent: " + ", ".join(sorted(seen_histograms)), file=sys.stderr)
    if not rows:
        print("no broker metrics received: was OTEL_EXPORTER_OTLP_ENDPOINT set for the broker?", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=4318)
    ap.add_argument("--out")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"OTLP receiver on http://127.0.0.1:{args.port}/v1/metrics", file=sys.stderr, flush=True)
    stop.wait()
    server.shutdown()
    report(args.out)


if __name__ == "__main__":
    main()
