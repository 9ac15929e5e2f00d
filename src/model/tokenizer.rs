//! Text to token ids and back, for both kinds of model this service runs.
//!
//! - Sentence encoders ship a Hugging Face `tokenizer.json`; [`TextTokenizer::from_hf_file`]
//!   loads it as is, except for padding and truncation, which callers do themselves.
//! - GGUF chat models carry their vocabulary as metadata (`tokenizer.ggml.*`) and name
//!   their pre-tokeniser only by a label (`tokenizer.ggml.pre`) that llama.cpp maps to
//!   regexes compiled into it. [`TextTokenizer::from_gguf_vocab`] rebuilds the same
//!   byte-level BPE tokenizer from that data with the `tokenizers` crate.
//!
//! Generation streams text token by token, and one character may span several byte-level
//! tokens, so [`TextTokenizer::token_bytes`] hands out the raw bytes of each token for
//! [`super::text_stream::TextStream`] to reassemble into valid UTF-8.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, Encoding, PreTokenizerWrapper, SplitDelimiterBehavior, Token, Tokenizer};

use super::gguf::{GgufError, GgufFile};

/// Why a tokenizer could not be built or could not process some text.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A `tokenizer.json` could not be read or parsed.
    #[error("cannot load tokenizer {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// `tokenizer.ggml.model` names a vocabulary type other than byte-level BPE.
    #[error("tokenizer model `{model}` (tokenizer.ggml.model) is not supported; only `gpt2` (byte-level BPE) is")]
    UnsupportedModel { model: String },
    /// `tokenizer.ggml.pre` names a pre-tokeniser this module does not implement.
    #[error(
        "pre-tokenizer `{pre}` (tokenizer.ggml.pre) is not supported; supported: smollm, llama-bpe \
         (llama3, llama-v3), qwen2, gpt2"
    )]
    UnsupportedPre { pre: String },
    /// The GGUF file does not say how to pre-tokenise, and guessing would silently give
    /// the model token sequences it was never trained on.
    #[error("tokenizer.ggml.pre is missing, so the pre-tokenizer cannot be chosen")]
    MissingPre,
    /// A `tokenizer.ggml.*` key is missing or has the wrong type (the error names both
    /// the file and the key).
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The vocabulary data is inconsistent; the message names the key and entry.
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// The `tokenizers` crate refused the assembled parts.
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    #[error("cannot encode text: {0}")]
    Encode(String),
    #[error("cannot decode ids: {0}")]
    Decode(String),
    /// An id outside the vocabulary was given to decode.
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownId { id: u32, vocab_size: usize },
}

/// The tokenizer data a GGUF file carries under `tokenizer.ggml.*`, as plain values, so
/// the tokenizer can be built (and tested) without a file.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenisation regexes the model was trained with.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, in id order, in the GPT-2 byte-to-character encoding.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`, highest priority first, each `"left right"`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (empty means all normal).
    pub token_types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether `encode(text, true)` puts BOS in front.
    pub add_bos: bool,
}

/// GGUF token types (llama.cpp's `llama_token_type`); the others are plain vocabulary.
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Split regexes of the pre-tokenisers that need one, as their models' `tokenizer.json`
/// writes them (llama.cpp runs hand-expanded equivalents of the same patterns).
/// Llama 3 groups digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 splits digits one by one.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenisers `tokenizer.ggml.pre` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizerKind {
    /// Plain GPT-2 regex.
    Gpt2,
    /// Each digit on its own, then the GPT-2 regex (SmolLM, StarCoder).
    SmolLm,
    Llama3,
    Qwen2,
}

impl PreTokenizerKind {
    fn from_label(pre: Option<&str>) -> Result<Self, TokenizerError> {
        match pre {
            None => Err(TokenizerError::MissingPre),
            Some("gpt2") => Ok(Self::Gpt2),
            Some("smollm") => Ok(Self::SmolLm),
            // The three labels llama.cpp treats as one Llama 3 pre-tokeniser.
            Some("llama-bpe" | "llama3" | "llama-v3") => Ok(Self::Llama3),
            Some("qwen2") => Ok(Self::Qwen2),
            Some(other) => Err(TokenizerError::UnsupportedPre { pre: other.to_string() }),
        }
    }

    /// llama.cpp adds BOS for Llama 3 vocabularies when the file does not say.
    fn default_add_bos(self) -> bool {
        self == Self::Llama3
    }

    /// Llama 3 takes a whole word straight from the vocabulary when it is there, rather
    /// than merging it up pair by pair (which can end elsewhere).
    fn ignores_merges(self) -> bool {
        self == Self::Llama3
    }

    fn pre_tokenizer(self) -> Result<Sequence, TokenizerError> {
        // ByteLevel's own regex is the GPT-2 one; where a model brings its own split,
        // ByteLevel only maps bytes to characters.
        let byte_level =
            |use_gpt2_regex: bool| -> PreTokenizerWrapper { ByteLevel::new(false, true, use_gpt2_regex).into() };
        let split = |regex: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
            Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map(Into::into)
                .map_err(|e| TokenizerError::Build(format!("pre-tokenizer regex: {e}")))
        };
        Ok(Sequence::new(match self {
            Self::Gpt2 => vec![byte_level(true)],
            Self::SmolLm => vec![Digits::new(true).into(), byte_level(true)],
            Self::Llama3 => vec![split(LLAMA3_SPLIT)?, byte_level(false)],
            Self::Qwen2 => vec![split(QWEN2_SPLIT)?, byte_level(false)],
        }))
    }
}

/// How an id's raw bytes are recovered, which depends on how the vocabulary spells bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceEncoding {
    /// GPT-2 byte-level: every byte is one character of a fixed table.
    ByteLevel,
    /// SentencePiece style: `▁` for a space, `<0xAB>` tokens for raw bytes.
    SentencePiece,
    /// Anything else (WordPiece): the decoder's text for the token alone.
    Other,
}

impl PieceEncoding {
    fn of(decoder: Option<&DecoderWrapper>) -> Self {
        // The decoder is inspected through its serialised form because nested decoder
        // sequences do not expose their parts.
        let Some(json) = decoder.and_then(|d| serde_json::to_value(d).ok()) else {
            return Self::Other;
        };
        let mut types = Vec::new();
        collect_types(&json, &mut types);
        if types.contains(&"ByteLevel") {
            Self::ByteLevel
        } else if types.iter().any(|t| matches!(*t, "ByteFallback" | "Metaspace")) {
            Self::SentencePiece
        } else {
            Self::Other
        }
    }
}

fn collect_types<'a>(json: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match json {
        serde_json::Value::Object(map) => {
            if let Some(t) = map.get("type").and_then(|t| t.as_str()) {
                out.push(t);
            }
            map.values().for_each(|v| collect_types(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_types(v, out)),
        _ => {}
    }
}

/// A tokenizer with the few operations the engines need. Cheap to share behind an `Arc`.
pub struct TextTokenizer {
    inner: Tokenizer,
    pieces: PieceEncoding,
    /// Ids of added tokens: their text is literal, not in the byte encoding.
    added: HashSet<u32>,
    /// Ids of special (control) tokens, dropped by `decode(_, true)`.
    special: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// GGUF vocabularies add BOS here; a `tokenizer.json` does it in its post-processor.
    prepend_bos: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pieces", &self.pieces)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Its padding and truncation are turned off:
    /// some files (MiniLM's) pad and cut every text to 128 tokens, and callers truncate
    /// to their model's own limit and pad per batch. Special tokens such as BERT's
    /// [CLS]/[SEP] are added by the file's post-processor when asked for.
    pub fn from_hf_file(path: &Path) -> Result<TextTokenizer, TokenizerError> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
        let pieces = PieceEncoding::of(inner.get_decoder());
        Ok(Self::assemble(inner, pieces, None, None, false))
    }

    /// Sets the BOS/EOS ids, which a `tokenizer.json` does not record (they live in the
    /// model's other config files).
    pub fn with_special_ids(mut self, bos: Option<u32>, eos: Option<u32>) -> Self {
        self.bos = bos;
        self.eos = eos;
        self
    }

    /// Builds a byte-level BPE tokenizer from GGUF vocabulary data: the vocabulary and
    /// merges as given, control tokens matched whole and treated as special, user-defined
    /// tokens matched whole, and the pre-tokeniser `pre` names.
    pub fn from_gguf_vocab(v: GgufVocab) -> Result<TextTokenizer, TokenizerError> {
        if v.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel { model: v.model });
        }
        let pre = PreTokenizerKind::from_label(v.pre.as_deref())?;
        let n = v.tokens.len();
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(TokenizerError::InvalidVocab(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                v.token_types.len()
            )));
        }
        for (key, id) in [("tokenizer.ggml.bos_token_id", v.bos), ("tokenizer.ggml.eos_token_id", v.eos)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(TokenizerError::InvalidVocab(format!("{key} = {id} is outside the {n} tokens")));
            }
        }
        if v.add_bos && v.bos.is_none() {
            return Err(TokenizerError::InvalidVocab(
                "tokenizer.ggml.add_bos_token is set but there is no tokenizer.ggml.bos_token_id".into(),
            ));
        }

        let vocab = vocabulary(&v.tokens)?;
        let merges = parse_merges(&v.merges)?;
        // Vocabularies need not spell every byte (SmolLM2's lacks a few control bytes and
        // rare UTF-8 lead bytes); such bytes are dropped from the text, as both
        // transformers and llama.cpp do with these models.
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignores_merges())
            .build()
            .map_err(|e| TokenizerError::Build(format!("BPE from tokenizer.ggml.tokens/merges: {e}")))?;

        let mut inner = Tokenizer::new(bpe);
        if pre == PreTokenizerKind::Qwen2 {
            // Qwen2's own tokenizer composes text to NFC before splitting.
            inner.with_normalizer(Some(NFC));
        }
        inner.with_pre_tokenizer(Some(pre.pre_tokenizer()?));
        inner.with_decoder(Some(ByteLevel::default()));

        // Added tokens are matched in the raw text before pre-tokenisation, so they are
        // never split. Added with their own ids, since they are already in the vocabulary.
        let added = |types: &[i32]| -> Vec<AddedToken> {
            v.token_types
                .iter()
                .zip(&v.tokens)
                .filter(|(t, _)| types.contains(t))
                .map(|(t, text)| AddedToken::from(text.as_str(), *t != TOKEN_TYPE_USER_DEFINED).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(&[TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN]));
        inner.add_tokens(&added(&[TOKEN_TYPE_USER_DEFINED]));

        Ok(Self::assemble(inner, PieceEncoding::ByteLevel, v.bos, v.eos, v.add_bos))
    }

    /// Reads the tokenizer of a GGUF model (`tokenizer.ggml.*`).
    pub fn from_gguf(file: &GgufFile) -> Result<TextTokenizer, TokenizerError> {
        Self::from_gguf_vocab(gguf_vocab(file)?)
    }

    fn assemble(
        inner: Tokenizer,
        pieces: PieceEncoding,
        bos: Option<u32>,
        eos: Option<u32>,
        prepend_bos: bool,
    ) -> Self {
        let decoder = inner.get_added_tokens_decoder();
        let added = decoder.keys().copied().collect();
        let special = decoder.iter().filter(|(_, t)| t.special).map(|(id, _)| *id).collect();
        Self { inner, pieces, added, special, bos, eos, prepend_bos }
    }

    /// Token ids of `text`. With `add_special`, the model's framing tokens are added
    /// (BOS for GGUF models that want it, [CLS]/[SEP] for BERT). Special tokens written
    /// in `text` itself (`<|im_start|>`) are always recognised, as chat prompts need.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, add_special).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(self.frame(encoding.get_ids(), add_special))
    }

    /// [`Self::encode`] for many texts at once.
    pub fn encode_batch(&self, texts: &[&str], add_special: bool) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let encodings =
            self.inner.encode_batch(texts.to_vec(), add_special).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encodings.iter().map(|e| self.frame(e.get_ids(), add_special)).collect())
    }

    /// Token ids given directly, framed as [`Self::encode`] with `add_special` frames a
    /// text's: the model's framing tokens ([CLS]/[SEP], or BOS) are added around them.
    pub fn frame_ids(&self, ids: &[u32]) -> Result<Vec<u32>, TokenizerError> {
        let vocab_size = self.vocab_size();
        let tokens = ids
            .iter()
            .map(|&id| match self.inner.id_to_token(id) {
                Some(value) => Ok(Token::new(id, value, (0, 0))),
                None => Err(TokenizerError::UnknownId { id, vocab_size }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let encoding = self
            .inner
            .post_process(Encoding::from_tokens(tokens, 0), None, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(self.frame(encoding.get_ids(), true))
    }

    fn frame(&self, ids: &[u32], add_special: bool) -> Vec<u32> {
        match self.bos {
            Some(bos) if add_special && self.prepend_bos => std::iter::once(bos).chain(ids.iter().copied()).collect(),
            _ => ids.to_vec(),
        }
    }

    /// Tokens `text` takes, without any framing tokens.
    pub fn count_tokens(&self, text: &str) -> Result<usize, TokenizerError> {
        Ok(self.encode(text, false)?.len())
    }

    /// Text of `ids`; with `skip_special`, control tokens are left out. Byte sequences that
    /// are not valid UTF-8 come out as U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let vocab_size = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::UnknownId { id, vocab_size });
        }
        if self.pieces == PieceEncoding::ByteLevel {
            // Built from token_bytes so that streamed text and decoded text always agree.
            let bytes: Vec<u8> = ids
                .iter()
                .filter(|id| !(skip_special && self.special.contains(id)))
                .flat_map(|&id| self.token_bytes(id))
                .collect();
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        self.inner.decode(ids, skip_special).map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Raw bytes of one token, for streaming: concatenated in order they form the text,
    /// though a single token may hold only part of a character. Special tokens give their
    /// literal text (`<|im_end|>`); use [`Self::is_special`] to hide them. An id outside
    /// the vocabulary gives no bytes (a model's output layer may be wider than its
    /// vocabulary). For tokenizers that are neither byte-level nor SentencePiece
    /// (WordPiece), this is the token decoded on its own, an approximation.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(token) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        if self.added.contains(&id) {
            return token.into_bytes();
        }
        match self.pieces {
            PieceEncoding::ByteLevel => {
                // A token outside the byte table is taken literally, as the byte-level
                // decoder of `tokenizers` does.
                token.chars().map(byte_of_char).collect::<Option<Vec<u8>>>().unwrap_or_else(|| token.into_bytes())
            }
            PieceEncoding::SentencePiece => match byte_fallback_token(&token) {
                Some(byte) => vec![byte],
                None => token.replace('\u{2581}', " ").into_bytes(),
            },
            PieceEncoding::Other => self.inner.decode(&[id], false).map(String::into_bytes).unwrap_or_default(),
        }
    }

    /// Whether `id` is a special (control) token such as BOS, EOS or `<|im_start|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The vocabulary entry of `id`, as the vocabulary spells it (`<|im_start|>`, or
    /// `Ġcapital` in the byte-level encoding); `None` outside the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a vocabulary entry, spelt as in the vocabulary.
    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
}

/// Reads `tokenizer.ggml.*` into plain data. Keys llama.cpp treats as optional may be
/// absent; present with the wrong type, they are an error.
fn gguf_vocab(file: &GgufFile) -> Result<GgufVocab, TokenizerError> {
    let strings = |key: &str| -> Result<Vec<String>, GgufError> {
        Ok(file.get_str_array(key)?.into_iter().map(str::to_string).collect())
    };
    let optional = |key: &str| file.get(key).is_some();
    let pre = if optional("tokenizer.ggml.pre") { Some(file.get_str("tokenizer.ggml.pre")?.to_string()) } else { None };
    let add_bos = if optional("tokenizer.ggml.add_bos_token") {
        file.get_bool("tokenizer.ggml.add_bos_token")?
    } else {
        // What llama.cpp assumes for this pre-tokeniser; an unknown one fails later anyway.
        PreTokenizerKind::from_label(pre.as_deref()).is_ok_and(PreTokenizerKind::default_add_bos)
    };
    let id = |key: &str| -> Result<Option<u32>, GgufError> {
        if optional(key) {
            file.get_u32(key).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(GgufVocab {
        model: file.get_str("tokenizer.ggml.model")?.to_string(),
        pre,
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: if optional("tokenizer.ggml.merges") { strings("tokenizer.ggml.merges")? } else { Vec::new() },
        token_types: if optional("tokenizer.ggml.token_type") {
            file.get_i32_array("tokenizer.ggml.token_type")?
        } else {
            Vec::new()
        },
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        add_bos,
    })
}

fn vocabulary(tokens: &[String]) -> Result<Vocab, TokenizerError> {
    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        if let Some(first) = vocab.insert(token.clone(), id as u32) {
            // One string, two ids: one of them could never be produced or decoded.
            return Err(TokenizerError::InvalidVocab(format!(
                "tokenizer.ggml.tokens has {token:?} twice, at {first} and {id}"
            )));
        }
    }
    Ok(vocab)
}

fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>, TokenizerError> {
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge.split_once(' ') {
            Some((left, right)) if !left.is_empty() && !right.is_empty() && !right.contains(' ') => {
                Ok((left.to_string(), right.to_string()))
            }
            _ => Err(TokenizerError::InvalidVocab(format!(
                "tokenizer.ggml.merges[{i}] = {merge:?} is not two tokens separated by one space"
            ))),
        })
        .collect()
}

/// SentencePiece's byte-fallback tokens are spelt `<0xAB>`.
fn byte_fallback_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

// GPT-2's byte-level encoding: bytes that are visible Latin-1 characters stand for
// themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen) are given the
// characters from U+0100 upwards, in byte order.

const fn stands_for_itself(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The bytes that do not stand for themselves, in order: the n-th is spelt U+0100 + n.
const SHIFTED_BYTES: [u8; 68] = {
    let mut out = [0u8; 68];
    let (mut b, mut n) = (0usize, 0usize);
    while b < 256 {
        if !stands_for_itself(b as u8) {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
};

fn byte_of_char(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 256 && stands_for_itself(code as u8) {
        Some(code as u8)
    } else {
        SHIFTED_BYTES.get(code.checked_sub(256)? as usize).copied()
    }
}

#[cfg(test)]
fn char_of_byte(b: u8) -> char {
    if stands_for_itself(b) {
        char::from(b)
    } else {
        let n = SHIFTED_BYTES.iter().position(|&s| s == b).expect("every byte is in one of the two sets");
        char::from_u32(256 + n as u32).expect("U+0100..U+0143 are characters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's table as its reference implementation states it: visible bytes keep their
    /// code point, the rest take 256, 257, ... in byte order. Written out independently
    /// of the module's table so the two check each other.
    fn reference_byte_chars() -> Vec<char> {
        let visible: Vec<u32> = (0x21..=0x7E).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
        let mut next = 256;
        (0..256u32)
            .map(|b| {
                if visible.contains(&b) {
                    char::from_u32(b).unwrap()
                } else {
                    next += 1;
                    char::from_u32(next - 1).unwrap()
                }
            })
            .collect()
    }

    /// A vocabulary of the 256 byte characters (id = byte value) followed by `extra`.
    fn vocab_with(pre: &str, extra: &[&str], merges: &[&str]) -> GgufVocab {
        let mut tokens: Vec<String> = reference_byte_chars().iter().map(|c| c.to_string()).collect();
        tokens.extend(extra.iter().map(|s| s.to_string()));
        GgufVocab {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            token_types: vec![1; tokens.len()],
            tokens,
            merges: merges.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn byte_table_matches_gpt2() {
        let reference = reference_byte_chars();
        for b in 0..=255u8 {
            assert_eq!(char_of_byte(b), reference[b as usize], "byte {b}");
            assert_eq!(byte_of_char(reference[b as usize]), Some(b), "byte {b}");
        }
        assert_eq!(char_of_byte(b' '), 'Ġ');
        assert_eq!(char_of_byte(b'\n'), 'Ċ');
        assert_eq!(byte_of_char('\u{144}'), None);
        assert_eq!(byte_of_char('€'), None);
    }

    #[test]
    fn merges_apply_in_priority_order() {
        // "abc" with both merges: whichever is listed first wins, and the other can no
        // longer apply because its left or right part is gone.
        let ab_first = TextTokenizer::from_gguf_vocab(vocab_with("gpt2", &["ab", "bc"], &["a b", "b c"])).unwrap();
        let bc_first = TextTokenizer::from_gguf_vocab(vocab_with("gpt2", &["ab", "bc"], &["b c", "a b"])).unwrap();
        assert_eq!(ab_first.encode("abc", false).unwrap(), vec![256, b'c' as u32]);
        assert_eq!(bc_first.encode("abc", false).unwrap(), vec![b'a' as u32, 257]);
    }

    #[test]
    fn space_is_part_of_the_following_word() {
        let tok = TextTokenizer::from_gguf_vocab(vocab_with("gpt2", &["Ġa"], &["Ġ a"])).unwrap();
        assert_eq!(tok.encode("a a", false).unwrap(), vec![b'a' as u32, 256]);
        assert_eq!(tok.decode(&[b'a' as u32, 256], false).unwrap(), "a a");
    }

    #[test]
    fn each_pre_tokenizer_splits_digits_its_own_way() {
        // Merges that would join all six digits when nothing splits them.
        let extra = ["12", "123", "45", "456", "123456"];
        let merges = ["1 2", "12 3", "4 5", "45 6", "123 456"];
        let ids = |pre: &str| {
            let tok = TextTokenizer::from_gguf_vocab(vocab_with(pre, &extra, &merges)).unwrap();
            tok.encode("123456", false).unwrap()
        };
        let digits: Vec<u32> = b"123456".iter().map(|&b| b as u32).collect();
        assert_eq!(ids("gpt2"), vec![260], "GPT-2 keeps a digit run whole");
        assert_eq!(ids("llama-bpe"), vec![257, 259], "Llama 3 groups digits by three");
        assert_eq!(ids("smollm"), digits, "SmolLM splits every digit");
        assert_eq!(ids("qwen2"), digits, "Qwen2 splits every digit");
    }

    #[test]
    fn llama3_contractions_ignore_case() {
        // "'Sx": Llama 3 cuts "'S" off as a contraction whatever its case, so "S x" cannot
        // merge; GPT-2's contractions are lower-case only, so "'" and "Sx" part instead.
        let v = |pre: &str| vocab_with(pre, &["Sx", "'S"], &["S x", "' S"]);
        let llama3 = TextTokenizer::from_gguf_vocab(v("llama-bpe")).unwrap();
        assert_eq!(llama3.encode("'Sx", false).unwrap(), vec![257, b'x' as u32]);
        let gpt2 = TextTokenizer::from_gguf_vocab(v("gpt2")).unwrap();
        assert_eq!(gpt2.encode("'Sx", false).unwrap(), vec![b'\'' as u32, 256]);
    }

    #[test]
    fn control_tokens_are_matched_whole_and_skippable() {
        let mut v = vocab_with("smollm", &["<|end|>", "<tool>"], &[]);
        v.token_types[256] = TOKEN_TYPE_CONTROL;
        v.token_types[257] = TOKEN_TYPE_USER_DEFINED;
        v.bos = Some(256);
        v.add_bos = true;
        let tok = TextTokenizer::from_gguf_vocab(v).unwrap();
        let ids = tok.encode("x<|end|><tool>", false).unwrap();
        assert_eq!(ids, vec![b'x' as u32, 256, 257]);
        assert_eq!(tok.encode("x", true).unwrap(), vec![256, b'x' as u32], "BOS in front");
        assert!(tok.is_special(256) && !tok.is_special(257) && !tok.is_special(b'x' as u32));
        assert_eq!(tok.decode(&ids, false).unwrap(), "x<|end|><tool>");
        // User-defined tokens are text, not control: they stay.
        assert_eq!(tok.decode(&ids, true).unwrap(), "x<tool>");
        assert_eq!(tok.token_bytes(256), b"<|end|>");
    }

    #[test]
    fn bad_vocabularies_are_rejected_with_their_key() {
        let err = |v: GgufVocab| TextTokenizer::from_gguf_vocab(v).unwrap_err().to_string();
        assert!(err(vocab_with("tekken-9", &[], &[])).contains("`tekken-9`"));
        assert!(matches!(
            TextTokenizer::from_gguf_vocab(GgufVocab { pre: None, ..vocab_with("gpt2", &[], &[]) }),
            Err(TokenizerError::MissingPre)
        ));
        assert!(err(GgufVocab { model: "llama".into(), ..vocab_with("gpt2", &[], &[]) }).contains("`llama`"));
        assert!(err(vocab_with("gpt2", &[], &["ab"])).contains("tokenizer.ggml.merges[0]"));
        assert!(err(vocab_with("gpt2", &["a"], &[])).contains("\"a\" twice"));
        assert!(err(vocab_with("gpt2", &[], &["a zz"])).contains("BPE"));
        let mut short_types = vocab_with("gpt2", &[], &[]);
        short_types.token_types.pop();
        assert!(err(short_types).contains("token_type"));
        assert!(err(GgufVocab { eos: Some(999), ..vocab_with("gpt2", &[], &[]) }).contains("eos_token_id = 999"));
    }

    #[test]
    fn bytes_the_vocabulary_lacks_are_dropped() {
        let mut v = vocab_with("gpt2", &[], &[]);
        v.tokens[4] = "<unused>".into();
        let tok = TextTokenizer::from_gguf_vocab(v).unwrap();
        assert_eq!(tok.encode("a\u{4}b", false).unwrap(), vec![b'a' as u32, b'b' as u32]);
    }

    #[test]
    fn decode_rejects_unknown_ids_and_token_bytes_gives_nothing() {
        let tok = TextTokenizer::from_gguf_vocab(vocab_with("gpt2", &[], &[])).unwrap();
        assert!(matches!(tok.decode(&[5, 4000], false), Err(TokenizerError::UnknownId { id: 4000, .. })));
        assert!(tok.token_bytes(4000).is_empty());
        assert_eq!(tok.token_bytes(0xE2), vec![0xE2]);
    }

    #[test]
    fn sentencepiece_tokenizer_json_gives_bytes_per_token() {
        // A Llama-2-style tokenizer.json in miniature: `▁` for spaces, bytes as <0xAB>.
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
          "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                            "rstrip": false, "normalized": false, "special": true}],
          "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false},
          "post_processor": null,
          "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": true, "ignore_merges": false,
                    "vocab": {"<s>": 0, "<0xE2>": 1, "<0x82>": 2, "<0xAC>": 3, "\u2581": 4, "h": 5, "i": 6,
                              "\u2581h": 7, "\u2581hi": 8},
                    "merges": ["\u2581 h", "\u2581h i"]}
        }"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        let tok = TextTokenizer::from_hf_file(&path).unwrap();
        let ids = tok.encode("hi €", false).unwrap();
        assert_eq!(ids, vec![8, 4, 1, 2, 3]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "hi €");
        assert_eq!(tok.token_bytes(8), b" hi");
        let tail: Vec<u8> = ids[1..].iter().flat_map(|&id| tok.token_bytes(id)).collect();
        assert_eq!(tail, " €".as_bytes());
        assert!(tok.is_special(0) && tok.bos_id().is_none());
        assert_eq!(tok.with_special_ids(Some(0), None).bos_id(), Some(0));
    }

    #[test]
    fn sentencepiece_byte_tokens() {
        assert_eq!(byte_fallback_token("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_fallback_token("<0xE2>"), Some(0xE2));
        assert_eq!(byte_fallback_token("<0x0A0>"), None);
        assert_eq!(byte_fallback_token("<s>"), None);
    }
}
