use candle_core::quantized::gguf_file;

use crate::model_path;

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
