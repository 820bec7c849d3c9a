use candle_core::quantized::gguf_file;

use crate::{cache_dir, model_path};

#[test]
fn gguf_tokenizer_round_trips_and_knows_chatml() {
    let Some(path) = model_path() else { return };
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let (tok, special) = aion_trainer::tokenizer::from_gguf_metadata(&content.metadata).unwrap();
    let tokens = content.metadata["tokenizer.ggml.tokens"].to_vec().unwrap();
    let id_of = |s: &str| {
        tokens
            .iter()
            .position(|t| t.to_string().unwrap() == s)
            .unwrap() as u32
    };
    for s in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        assert_eq!(tok.token_to_id(s), Some(id_of(s)), "{s}");
    }
    assert_eq!(tok.get_vocab_size(true), 49_152);
    assert_eq!(special.eos, id_of("<|im_end|>"));

    // Special tokens are single ids even inside text.
    let chat = "<|im_start|>user\nOlá!<|im_end|>\n";
    let enc = tok.encode(chat, false).unwrap();
    assert_eq!(enc.get_ids()[0], id_of("<|im_start|>"));
    assert!(enc.get_ids().contains(&id_of("<|im_end|>")));

    for text in [
        "Ação, coração e pão de açúcar — não é? Sim, é: 100% 🇧🇷🎉",
        "The quick brown fox jumps over the lazy dog. Naïve café, résumé… 😀👍🏽",
        "  leading spaces,\ttabs\nand new lines  ",
    ] {
        let enc = tok.encode(text, false).unwrap();
        let back = tok.decode(enc.get_ids(), false).unwrap();
        assert_eq!(back, text);
    }
    // Plain words are single GPT-2-style tokens with the Ġ space marker.
    let enc = tok.encode("Hello world", false).unwrap();
    assert_eq!(enc.get_tokens(), ["Hello", "Ġworld"]);
}

/// A SentencePiece (LLaMA-style) GGUF: SentencePiece itself trains a BPE model with LLaMA's
/// settings and encodes texts with it (`scripts/checks/spm_gguf_reference.py`, the `gguf`
/// package writing the file as llama.cpp's converter does); the tokenizer built from the GGUF
/// metadata gives the same ids and decodes them to the same text: byte fallback for unseen
/// characters, digits, runs of spaces, tabs and new lines, the empty text.
#[test]
fn sentencepiece_gguf_tokenizer_matches_sentencepiece() {
    let python = cache_dir().unwrap().join("venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("AION_REQUIRE_MODELS").is_none(),
            "{} is missing: run scripts/setup --tests",
            python.display()
        );
        eprintln!("SKIPPED: {} is missing", python.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/checks/spm_gguf_reference.py"
    );
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut file = std::fs::File::open(reference["gguf"].as_str().unwrap()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let (tok, special) = aion_trainer::tokenizer::from_gguf_metadata(&content.metadata).unwrap();
    assert_eq!((special.bos, special.eos), (Some(1), 2));

    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, expected, "{text:?}");
        let decoded = tok.decode(&ids, false).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap(), "{text:?}");
    }
}
