"""Checks aion's per-event nDCG@k against trec_eval (pytrec_eval) and scikit-learn.

usage: ndcg_reference.py EVENTS.jsonl LINEAR.jsonl EXPONENTIAL.jsonl K

EVENTS holds retrieval.v1 events; LINEAR and EXPONENTIAL are `aion ndcg` outputs for them. Every
scored event must agree with every applicable reference to 1e-9; unscored events (no judgment) must
be exactly those without any judgment. Exponential gain is checked by giving the references the
grades 2^rel - 1 (both then apply linear gain to them).
"""
import json
import sys

import numpy as np
import pytrec_eval
from sklearn.metrics import ndcg_score

TOLERANCE = 1e-9


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def grades(event):
    """Judged grades per document: the judgment list wins over a result's own rel."""
    g = {r["doc_id"]: r["rel"] for r in event["results"] if "rel" in r}
    g.update({j["doc_id"]: j["rel"] for j in event.get("judgments") or []})
    return g


def main(events_path, linear_path, exponential_path, k):
    k = int(k)
    events = load(events_path)
    failures, checked = [], {"trec_eval": 0, "sklearn": 0, "unscored": 0}
    for gain_name, scores_path in (("linear", linear_path), ("exponential", exponential_path)):
        ours = {s["event_id"]: s["ndcg"] for s in load(scores_path)}
        assert len(ours) == len(events), f"{scores_path}: {len(ours)} scores for {len(events)} events"
        to_gain = (lambda r: r) if gain_name == "linear" else (lambda r: 2**r - 1)
        qrels, run = {}, {}
        for e in events:
            g = grades(e)
            if not g:
                if ours[e["event_id"]] is not None:
                    failures.append(f"{e['event_id']}: unjudged but scored")
                checked["unscored"] += 1
                continue
            ranked = sorted(e["results"], key=lambda r: r["rank"])
            qrels[e["event_id"]] = {d: to_gain(r) for d, r in g.items()}
            # Distinct descending scores reproduce the rank order (trec_eval sorts by score).
            run[e["event_id"]] = {r["doc_id"]: float(len(ranked) - i) for i, r in enumerate(ranked)}
            # scikit-learn's ideal is over the documents passed; it matches when every judged
            # document is passed and unretrieved ones cannot enter the top k.
            unretrieved = [d for d in g if d not in run[e["event_id"]]]
            if len(ranked) >= 2 and (not unretrieved or len(ranked) >= k):
                y_true = [to_gain(g.get(r["doc_id"], 0)) for r in ranked] + [to_gain(g[d]) for d in unretrieved]
                y_score = [float(len(ranked) - i) for i in range(len(ranked))] + [-1.0 - i for i in range(len(unretrieved))]
                ref = ndcg_score(np.asarray([y_true], dtype=float), np.asarray([y_score]), k=k)
                checked["sklearn"] += 1
                if abs(ref - ours[e["event_id"]]) > TOLERANCE:
                    failures.append(f"{e['event_id']} {gain_name}: sklearn {ref!r} aion {ours[e['event_id']]!r}")
        measure = f"ndcg_cut.{k}"
        results = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)
        for event_id, measures in results.items():
            ref = measures[f"ndcg_cut_{k}"]
            checked["trec_eval"] += 1
            if abs(ref - ours[event_id]) > TOLERANCE:
                failures.append(f"{event_id} {gain_name}: trec_eval {ref!r} aion {ours[event_id]!r}")
        if len(results) != len(qrels):
            failures.append(f"{gain_name}: trec_eval scored {len(results)} of {len(qrels)} judged events")
    print(f"nDCG@{k} reference check: {checked}, {len(failures)} disagreements")
    for f in failures[:20]:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
