#!/usr/bin/env python3
"""Reference for the trainer's SentencePiece GGUF tokenizer (LLaMA / Mistral style).

Trains a small SentencePiece BPE model with LLaMA's settings (byte fallback, split digits,
identity normalisation, whitespace kept, a dummy prefix), writes its vocabulary into a GGUF file
the way llama.cpp's converter does (`tokenizer.ggml.model = "llama"`: tokens, scores, token
types), and prints one JSON object: the GGUF path and, for each test text, the ids and the
decoded text SentencePiece itself gives.

  python spm_gguf_reference.py --out DIR
"""
import argparse
import json
import os

import gguf
import sentencepiece as spm

CORPUS = [
    "The city council met on Tuesday evening to discuss the new budget for public transport.",
    "Several members argued that the bus network should be expanded to the northern districts.",
    "Others warned that the money would be better spent on repairing the roads that exist.",
    "After a long debate, the council agreed to commission a study and to vote again next month.",
    "A reconstrução incremental do índice e o recurso a um modelo externo são medidos por cliente.",
    "Quando a qualidade desce abaixo do limiar, um gatilho pede ao treinador um novo adaptador.",
    "Results are written atomically, and only then is the consumer offset stored.",
    "    Indented code keeps its spaces:  x = 1  ",
    "Numbers like 2026, 3.14 and 1,000,000 are split into digits.",
]

TEXTS = [
    "The council met on Tuesday.",
    "Ação, coração e pão de açúcar — não é?",
    "  two leading spaces and two trailing  ",
    "tabs\tand\nnew lines",
    "dates 2026-12-04 and times 14:30",
    "unseen characters fall back to bytes: 東京 🙂 ∑",
    "a",
    " ",
    "",
    "multiple     spaces     inside",
]


def token_type(sp: spm.SentencePieceProcessor, i: int) -> int:
    """llama.cpp's SentencePieceTokenTypes, decided as its converter decides them."""
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the model and the GGUF")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    corpus = os.path.join(args.out, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(CORPUS * 4) + "\n")
    prefix = os.path.join(args.out, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=420,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

    path = os.path.join(args.out, "tokenizer.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i).encode("utf-8") for i in range(sp.get_piece_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    writer.add_token_types([token_type(sp, i) for i in range(sp.get_piece_size())])
    writer.add_unk_token_id(sp.unk_id())
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    cases = []
    for text in TEXTS:
        ids = sp.encode(text)
        cases.append({"text": text, "ids": ids, "decoded": sp.decode(ids)})
    print(json.dumps({"gguf": path, "cases": cases}, ensure_ascii=False))


if __name__ == "__main__":
    main()
