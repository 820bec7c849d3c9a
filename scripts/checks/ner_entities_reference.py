"""Reference entities of the NER model: onnxruntime on the original quantised ONNX, tokens grouped
into words and entities as transformers' TokenClassificationPipeline does with
aggregation_strategy "first", "max" and "average" (gather_pre_entities, aggregate_words,
group_entities), written from the transformers documentation and source, independent of aion.

usage: ner_entities_reference.py MODEL_DIR < texts.jsonl > entities.jsonl
Each input line is a JSON string; each output line {"first": [...], "max": [...], "average": [...]}
with entities as [type, start, end] in UTF-8 byte offsets of the text.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def tag(label):
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label  # "O": transformers' get_tag


def aggregate_word(pieces, strategy, id2label):
    if strategy == "first":
        scores = pieces[0]["scores"]
    elif strategy == "max":
        scores = max(pieces, key=lambda p: p["scores"].max())["scores"]
    else:
        scores = np.nanmean(np.stack([p["scores"] for p in pieces]), axis=0)
    idx = int(scores.argmax())
    return {"entity": id2label[idx], "score": float(scores[idx]),
            "start": pieces[0]["start"], "end": pieces[-1]["end"]}


def aggregate_words(pre, strategy, id2label):
    words, group = [], None
    for p in pre:
        if group is None:
            group = [p]
        elif p["is_subword"]:
            group.append(p)
        else:
            words.append(aggregate_word(group, strategy, id2label))
            group = [p]
    if group is not None:
        words.append(aggregate_word(group, strategy, id2label))
    return words


def group_entities(words):
    groups, current = [], []
    for w in words:
        if not current:
            current.append(w)
            continue
        bi, t = tag(w["entity"])
        _, last_t = tag(current[-1]["entity"])
        if t == last_t and bi != "B":
            current.append(w)
        else:
            groups.append(current)
            current = [w]
    if current:
        groups.append(current)
    out = []
    for g in groups:
        t = tag(g[0]["entity"])[1]
        if t != "O":
            out.append((t, g[0]["start"], g[-1]["end"]))
    return out


def main():
    model = sys.argv[1]
    config = json.load(open(f"{model}/config.json"))
    id2label = {int(k): v for k, v in config["id2label"].items()}
    tokenizer = Tokenizer.from_file(f"{model}/tokenizer.json")
    unk = tokenizer.token_to_id("[UNK]")
    session = ort.InferenceSession(f"{model}/onnx/model_q4.onnx", providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for line in sys.stdin:
        text = json.loads(line)
        enc = tokenizer.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        assert ids.shape[1] <= config["max_position_embeddings"], "one window per text"
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        logits = session.run(None, {k: v for k, v in feeds.items() if k in names})[0][0]
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = shifted / shifted.sum(axis=-1, keepdims=True)
        pre = []
        for i, (token_id, (start, end), special) in enumerate(zip(enc.ids, enc.offsets, enc.special_tokens_mask)):
            if special:
                continue
            word, word_ref = tokenizer.id_to_token(token_id), text[start:end]
            # WordPiece has a continuing-subword prefix: the pipeline's word-aware path.
            is_subword = len(word) != len(word_ref)
            if token_id == unk:
                is_subword = False
            pre.append({"scores": scores[i], "start": start, "end": end, "is_subword": is_subword})
        byte = lambda c: len(text[:c].encode("utf-8"))
        out = {}
        for strategy in ("first", "max", "average"):
            out[strategy] = [[t, byte(s), byte(e)] for t, s, e in group_entities(aggregate_words(pre, strategy, id2label))]
        print(json.dumps(out))


if __name__ == "__main__":
    main()
