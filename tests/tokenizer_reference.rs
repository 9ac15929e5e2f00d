//! The tokenizers and the chat template against the real model files, with reference
//! values from `sentence-transformers`/`transformers` on the same files (see
//! `shared/notes/models.md`) and from the GGUF vocabulary itself.

use std::path::PathBuf;
use std::sync::OnceLock;

use engram::model::chat_template::{ChatMessage, ChatTemplate};
use engram::model::gguf::GgufFile;
use engram::model::tokenizer::TextTokenizer;

fn model_path(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(relative);
    assert!(path.exists(), "{} is missing: the project's set-up installs it", path.display());
    path
}

fn smollm_file() -> &'static GgufFile {
    static FILE: OnceLock<GgufFile> = OnceLock::new();
    FILE.get_or_init(|| GgufFile::open(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).expect("open the SmolLM2 GGUF"))
}

/// Built once: 49k tokens and merges take a moment.
fn smollm() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| TextTokenizer::from_gguf(smollm_file()).expect("SmolLM2 tokenizer"))
}

fn minilm() -> TextTokenizer {
    TextTokenizer::from_hf_file(&model_path("all-MiniLM-L6-v2/tokenizer.json")).expect("MiniLM tokenizer")
}

#[test]
fn minilm_matches_sentence_transformers() {
    let tok = minilm();
    let ids = tok.encode("A man is eating food.", true).unwrap();
    assert_eq!(ids, [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]);
    // Without special tokens, the same words without [CLS]/[SEP].
    assert_eq!(tok.encode("A man is eating food.", false).unwrap(), ids[1..7]);
}

#[test]
fn minilm_is_neither_truncated_nor_padded() {
    // The shipped tokenizer.json pads and truncates everything to 128 tokens.
    let tok = minilm();
    let long = vec!["hello"; 300].join(" ");
    let ids = tok.encode(&long, true).unwrap();
    assert_eq!(ids.len(), 302, "300 words plus [CLS] and [SEP]");
    assert!(ids[1..301].iter().all(|&id| id == 7592), "'hello' is id 7592 in vocab.txt");
    let lengths: Vec<usize> = tok.encode_batch(&["hi", &long], true).unwrap().iter().map(Vec::len).collect();
    assert_eq!(lengths, [3, 302]);
    assert_eq!(tok.count_tokens(&long).unwrap(), 300);
}

#[test]
fn smollm_matches_transformers() {
    let tok = smollm();
    assert_eq!(tok.encode("The capital of France is", false).unwrap(), [504, 3575, 282, 4649, 314]);
    // The file sets tokenizer.ggml.add_bos_token = false: nothing is added.
    assert_eq!(tok.encode("The capital of France is", true).unwrap(), [504, 3575, 282, 4649, 314]);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
}

#[test]
fn smollm_splits_digits_one_per_token() {
    // Ids of "1".."5" in tokenizer.ggml.tokens. (This vocabulary has no multi-digit
    // tokens; the unit tests show the split with a vocabulary that has them.)
    assert_eq!(smollm().encode("12345", false).unwrap(), [33, 34, 35, 36, 37]);
}

#[test]
fn smollm_control_tokens_are_single_ids() {
    let tok = smollm();
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), [1]);
    assert_eq!(tok.encode("<|im_end|>", false).unwrap(), [2]);
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n", false).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 2]), (1, 2));
    assert_eq!(tok.id_of("<|im_start|>"), Some(1));
    assert!(tok.is_special(2) && !tok.is_special(504));
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi\n");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
}

#[test]
fn smollm_round_trips_multilingual_text() {
    let tok = smollm();
    let text = "Grüße aus Köln! 東京は晴れ。Привет, мир — ¿qué tal? 🎉👩‍💻\n\ttabs,  two spaces, 3.14159";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let streamed: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
    assert_eq!(streamed, text.as_bytes());
}

#[test]
fn smollm_emoji_bytes_come_in_pieces() {
    let tok = smollm();
    let ids = tok.encode("🎉", false).unwrap();
    let pieces: Vec<Vec<u8>> = ids.iter().map(|&id| tok.token_bytes(id)).collect();
    assert!(pieces.len() > 1, "the vocabulary has no whole 🎉 token");
    assert!(std::str::from_utf8(&pieces[0]).is_err(), "a piece holds part of the character");
    assert_eq!(pieces.concat(), "🎉".as_bytes());
}

#[test]
fn smollm_chat_template_renders_like_transformers() {
    let file = smollm_file();
    let tok = smollm();
    let source = file.get_str("tokenizer.chat_template").expect("the file has a chat template");
    let bos = tok.token_text(tok.bos_id().unwrap()).unwrap();
    let eos = tok.token_text(tok.eos_id().unwrap()).unwrap();
    assert_eq!((bos.as_str(), eos.as_str()), ("<|im_start|>", "<|im_end|>"));
    let template = ChatTemplate::new(source, &bos, &eos).unwrap();
    let prompt = template.render(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    // A system message of the caller's own replaces the default one.
    let with_system =
        template.render(&[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")], false).unwrap();
    assert_eq!(with_system, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}
