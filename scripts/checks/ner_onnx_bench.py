"""The Python onnxruntime NER pipeline, timed: tokenize, run the original quantised ONNX in
batches, softmax, best label per token, group into entities (simple strategy, as the enricher).

usage: ner_onnx_bench.py MODEL_DIR TEXTS_JSONL PASSES BATCH_SIZE...
Prints one line per batch size: `<batch> <texts per CPU-second> <tokens per CPU-second> <wall s>`.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


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


def main():
    model_dir, texts_path, passes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = json.load(open(f"{model_dir}/config.json"))
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    texts = [json.loads(l) for l in open(texts_path)] * passes
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tokenizer.enable_truncation(512)
    session = ort.InferenceSession(f"{model_dir}/onnx/model_q4.onnx", providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for batch_size in map(int, sys.argv[4:]):
        cpu, wall, tokens = time.process_time(), time.perf_counter(), 0
        for i in range(0, len(texts), batch_size):
            batch = texts[i:i + batch_size]
            encodings = tokenizer.encode_batch(batch)
            longest = max(len(e.ids) for e in encodings)
            ids = np.zeros((len(batch), longest), dtype=np.int64)
            mask = np.zeros_like(ids)
            for j, e in enumerate(encodings):
                ids[j, :len(e.ids)] = e.ids
                mask[j, :len(e.ids)] = 1
                tokens += len(e.ids) - 2
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            logits = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            for j, e in enumerate(encodings):
                n = len(e.ids)
                best = probs[j, 1:n - 1].argmax(-1)
                group([labels[b] for b in best], probs[j, 1:n - 1].max(-1), e.offsets[1:n - 1])
        cpu = time.process_time() - cpu
        print(batch_size, len(texts) / cpu, tokens / cpu, time.perf_counter() - wall, flush=True)


if __name__ == "__main__":
    main()
