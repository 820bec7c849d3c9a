"""The onnxruntime side of `aion bench ner`, one thread, no spinning.

Reads one JSON object on stdin:
  model_dir, repeats, batch_size,
  sets: {name: [token id sequences, framed]}  -- the exact model inputs aion runs
  probs_for: name of the set whose label probabilities are returned (entity F1 on the Rust side)
  events: [[segment, ...], ...]               -- realistic events for the pipeline a user would write
Writes one JSON object on stdout:
  runtimes: {runtime: {set: {tokens_per_cpu_s, labels}}}, probs: {runtime: [...]},
  pipeline: {events_per_cpu_s, tokens}

Runtimes: the shipped 4-bit model as it is (onnxruntime computes its MatMulNBits in f32), and the
same graph with accuracy_level=4 (int8 activations: the numerics aion's int8 path would match).
Sequences run `batch_size` at a time, sorted by length and padded, as onnxruntime users batch; with
batches of more than one, the shipped model also runs one sequence at a time (no padding), which
is faster on windows of very different lengths: aion's ratios are taken against the faster one.
"""
import json
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

WIDTH, OVERLAP = 510, 64
UNPADDED = "onnxruntime shipped, batch 1 (no padding)"


def session(model_bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run(sess, sequences, batch_size):
    """Softmax probabilities per sequence (rows of its tokens), in input order."""
    names = {i.name for i in sess.get_inputs()}
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [None] * len(sequences)
    for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size]
        longest = max(len(sequences[i]) for i in batch)
        ids = np.zeros((len(batch), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for j, i in enumerate(batch):
            ids[j, :len(sequences[i])] = sequences[i]
            mask[j, :len(sequences[i])] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        logits = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for j, i in enumerate(batch):
            out[i] = probs[j, :len(sequences[i])]
    return out


def timed(f, repeats):
    """f's result and its median CPU seconds over `repeats` runs."""
    times = []
    for _ in range(repeats):
        cpu = time.process_time()
        result = f()
        times.append(time.process_time() - cpu)
    return result, statistics.median(times)


def group(labels, scores, offsets):
    entities, current = [], None
    for label, score, (start, end) in zip(labels, scores, offsets):
        tag, _, kind = label.partition("-")
        if label == "O" or tag == "B" or current is None or current[0] != kind:
            if current:
                entities.append(current)
            current = None if label == "O" else [kind, start, end, [score]]
        else:
            current[2] = end
            current[3].append(score)
    if current:
        entities.append(current)
    return [(k, s, e, float(np.mean(sc))) for k, s, e, sc in entities]


def pipeline(sess, tokenizer, labels, events, batch_size):
    """The Python enricher a user would write: per event, tokenize each segment, cut windows of
    510 tokens with 64 shared, run them batched, label each token, group entities."""
    tokens = 0
    for segments in events:
        windows = []
        for e in tokenizer.encode_batch(segments, add_special_tokens=False):
            start = 0
            while True:
                end = min(start + WIDTH, len(e.ids))
                windows.append(([tokenizer.token_to_id("[CLS]")] + e.ids[start:end] + [tokenizer.token_to_id("[SEP]")], e.offsets[start:end]))
                if end >= len(e.ids):
                    break
                start = end - OVERLAP
        tokens += sum(len(w[0]) for w in windows)
        for (ids, offsets), probs in zip(windows, run(sess, [w[0] for w in windows], batch_size)):
            best = probs[1:-1].argmax(-1)
            group([labels[b] for b in best], probs[1:-1].max(-1), offsets)
    return tokens


def main():
    request = json.load(sys.stdin)
    model_dir, repeats, batch_size = request["model_dir"], request["repeats"], request["batch_size"]
    config = json.load(open(f"{model_dir}/config.json"))
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    shipped = onnx.load(f"{model_dir}/onnx/model_q4.onnx")
    level4 = onnx.load(f"{model_dir}/onnx/model_q4.onnx")
    for node in level4.graph.node:
        if node.op_type == "MatMulNBits":
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    sessions = {
        "onnxruntime shipped (f32 compute)": session(shipped.SerializeToString()),
        "onnxruntime accuracy_level=4 (int8)": session(level4.SerializeToString()),
    }
    runs = [(name, sess, batch_size) for name, sess in sessions.items()]
    if batch_size > 1:
        runs.insert(1, (UNPADDED, sessions["onnxruntime shipped (f32 compute)"], 1))
    out = {"runtimes": {}, "probs": {}}
    for name, sess, batch in runs:
        out["runtimes"][name] = {}
        for set_name, sequences in request["sets"].items():
            probs, cpu = timed(lambda: run(sess, sequences, batch), repeats)
            out["runtimes"][name][set_name] = {
                "tokens_per_cpu_s": sum(map(len, sequences)) / max(cpu, 1e-9),
                "labels": [p.argmax(-1).tolist() for p in probs],
            }
            if set_name == request["probs_for"]:
                out["probs"][name] = [p.tolist() for p in probs]
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    sess = sessions["onnxruntime shipped (f32 compute)"]
    events = request["events"]
    tokens, cpu = timed(lambda: pipeline(sess, tokenizer, labels, events, batch_size), repeats)
    out["pipeline"] = {"events_per_cpu_s": len(events) / max(cpu, 1e-9), "tokens": tokens}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
