"""Reference logits of the NER model: onnxruntime on the original quantised ONNX.

usage: ner_reference.py MODEL_DIR < ids.jsonl > logits.jsonl
Each input line is a JSON list of token ids ([CLS] ... [SEP]); each output line the logits
[tokens][labels] for it.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    session = ort.InferenceSession(f"{sys.argv[1]}/onnx/model_q4.onnx", providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for line in sys.stdin:
        ids = np.array([json.loads(line)], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        logits = session.run(None, {k: v for k, v in feeds.items() if k in names})[0][0]
        print(json.dumps(logits.tolist()))


if __name__ == "__main__":
    main()
