//! What OpenAI's endpoints share, on the way in and out: the `input`/`prompt` union
//! (text or token ids), the sampling fields, `stop`, `stream_options`, refusals of what
//! one local model cannot do, and the log-probability and usage shapes of the answers.
//!
//! Requests follow OpenAI's API reference: every standard field is accepted (null
//! meaning "not set"), and one that engram cannot honour is refused with a 400 whose
//! `param` names it, never silently ignored.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::model::generator::{GenerationSummary, TokenChoice, TokenLogprob};
use crate::model::sampling::SamplingParams;

/// A string or a list of strings, as OpenAI's `stop` accepts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// OpenAI's `input` (embeddings) and `prompt` (completions): a string, a list of
/// strings, a list of token ids, or a list of such lists.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TextOrTokens {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

/// One item of a [`TextOrTokens`].
#[derive(Debug, PartialEq)]
pub enum Item {
    Text(String),
    Tokens(Vec<i64>),
}

impl TextOrTokens {
    /// The items: one for a string or a single token list, one per element otherwise.
    pub fn into_items(self) -> Vec<Item> {
        match self {
            TextOrTokens::Text(s) => vec![Item::Text(s)],
            TextOrTokens::Texts(v) => v.into_iter().map(Item::Text).collect(),
            TextOrTokens::Tokens(ids) => vec![Item::Tokens(ids)],
            TextOrTokens::TokenLists(v) => v.into_iter().map(Item::Tokens).collect(),
        }
    }

    /// Whether items are numbered in `param` (`input[2]`) or it is one item (`input`).
    pub fn is_list(&self) -> bool {
        matches!(self, TextOrTokens::Texts(_) | TextOrTokens::TokenLists(_))
    }
}

/// Token ids checked against a vocabulary of `vocab` ids; `param` names the list.
pub fn token_ids(ids: &[i64], vocab: usize, param: &str) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(i, &id)| match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => Err(ApiError::invalid_field(
                &format!("{param}[{i}]"),
                format_args!("token id {id} is outside the model's vocabulary of {vocab} ids"),
            )),
        })
        .collect()
}

/// The sampling fields of a request, as sent (`None`: not sent, or null).
#[derive(Debug, Default)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub seed: Option<i64>,
    /// engram's own, beyond OpenAI's.
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
}

impl SamplingFields {
    /// The sampler's parameters: what was sent over `defaults`, checked, each error
    /// naming its field. `vocab` bounds `logit_bias`'s token ids.
    pub fn into_params(self, defaults: SamplingParams, vocab: usize) -> Result<SamplingParams, ApiError> {
        let logit_bias = match self.logit_bias {
            None => Vec::new(),
            Some(map) => map
                .into_iter()
                .map(|(key, bias)| match key.trim().parse::<u32>() {
                    Ok(id) if (id as usize) < vocab => Ok((id, bias)),
                    _ => Err(ApiError::invalid_field(
                        "logit_bias",
                        format_args!("`{key}` is not a token id of the model's vocabulary of {vocab} ids"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            // OpenAI's seed is any integer; the bits are what matter.
            seed: self.seed.map(|s| s as u64).or(defaults.seed),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            logit_bias,
        };
        params.validate().map_err(|e| ApiError::invalid_field(e.param, e.message))?;
        Ok(params)
    }
}

/// At most four stop strings, as OpenAI allows.
pub fn stop_list(stop: Option<OneOrMany>) -> Result<Vec<String>, ApiError> {
    let stop = stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid_field("stop", "takes at most 4 strings"));
    }
    Ok(stop)
}

/// `max_tokens` (or `max_completion_tokens`, named by `param`), when sent, is at least 1.
pub fn max_tokens(value: Option<usize>, param: &str) -> Result<Option<usize>, ApiError> {
    match value {
        Some(0) => Err(ApiError::invalid_field(param, "must be at least 1")),
        v => Ok(v),
    }
}

/// OpenAI's `stream_options`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// A last chunk, before `[DONE]`, with `choices: []` and the usage of the request.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl StreamOptions {
    pub fn include_usage(options: &Option<StreamOptions>) -> bool {
        options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }
}

/// One sequence per request: `n` (or `best_of`), when sent, must be 1.
pub fn only_one(param: &str, value: Option<i64>) -> Result<(), ApiError> {
    match value {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::invalid_field(
            param,
            format_args!("engram generates one choice per request; {n} were asked (send 1 or leave it out)"),
        )),
    }
}

/// A refusal of a field engram cannot honour.
pub fn unsupported(param: &str, why: &str) -> ApiError {
    ApiError::invalid_field(param, format_args!("not supported: {why}"))
}

/// Whether a JSON value was sent with content (not absent, null, empty list or object).
pub fn is_set(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// OpenAI's `usage`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`: how many prompt tokens came from the session's cache.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }

    pub fn of(s: &GenerationSummary) -> Self {
        Self::new(s.prompt_tokens, s.completion_tokens, s.cached_tokens)
    }
}

/// A token's text as OpenAI shows it: its bytes as UTF-8, a partial character as U+FFFD
/// (the exact bytes are in `bytes`).
fn token_text(t: &TokenChoice) -> String {
    String::from_utf8_lossy(&t.bytes).into_owned()
}

/// A token and its log-probability.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenProbability {
    pub token: String,
    pub logprob: f32,
    /// The token's exact bytes (`token` shows a partial character as U+FFFD).
    pub bytes: Vec<u8>,
}

impl From<&TokenChoice> for TokenProbability {
    fn from(t: &TokenChoice) -> Self {
        Self { token: token_text(t), logprob: t.logprob, bytes: t.bytes.clone() }
    }
}

/// A generated token with the most likely alternatives.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    #[serde(flatten)]
    pub chosen: TokenProbability,
    pub top_logprobs: Vec<TokenProbability>,
}

/// Chat's `logprobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    /// Always null: the model does not refuse.
    #[schema(required = true)]
    pub refusal: Option<String>,
}

/// Chat's `logprobs` for `entries`.
pub fn chat_logprobs(entries: &[TokenLogprob]) -> ChatLogprobs {
    let content = entries
        .iter()
        .map(|e| ChatTokenLogprob { chosen: (&e.token).into(), top_logprobs: e.top.iter().map(Into::into).collect() })
        .collect();
    ChatLogprobs { content, refusal: None }
}

/// The legacy completions' `logprobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, the alternatives' log-probabilities by text (the chosen one included).
    pub top_logprobs: Vec<HashMap<String, f32>>,
    /// Each token's offset in characters in the choice's text.
    pub text_offset: Vec<usize>,
}

/// The legacy completions' `logprobs` (`tokens`, `token_logprobs`, `top_logprobs`,
/// `text_offset`), kept across the chunks of a stream so that offsets run on.
#[derive(Debug, Default)]
pub struct CompletionLogprobs {
    /// Characters of the text before the next token.
    offset: usize,
    /// Bytes of a character still missing its tail.
    partial: Vec<u8>,
}

impl CompletionLogprobs {
    /// Starts after `before` (the echoed prompt, or nothing).
    pub fn after(before: &str) -> Self {
        Self { offset: before.chars().count(), partial: Vec::new() }
    }

    /// The shape for `entries`, the next tokens of the text.
    pub fn shape(&mut self, entries: &[TokenLogprob]) -> TextLogprobs {
        let mut offsets = Vec::with_capacity(entries.len());
        for e in entries {
            offsets.push(self.offset);
            self.advance(&e.token.bytes);
        }
        let top: Vec<HashMap<String, f32>> = entries
            .iter()
            .map(|e| {
                // OpenAI lists the chosen token too, when it is not among the best.
                let mut top: HashMap<String, f32> = e.top.iter().map(|t| (token_text(t), t.logprob)).collect();
                top.entry(token_text(&e.token)).or_insert(e.token.logprob);
                top
            })
            .collect();
        TextLogprobs {
            tokens: entries.iter().map(|e| token_text(&e.token)).collect(),
            token_logprobs: entries.iter().map(|e| e.token.logprob).collect(),
            top_logprobs: top,
            text_offset: offsets,
        }
    }

    /// Counts the characters `bytes` complete (an invalid byte is one U+FFFD).
    fn advance(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.offset += s.chars().count();
                    self.partial.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    self.offset += String::from_utf8_lossy(&self.partial[..valid]).chars().count();
                    match e.error_len() {
                        None => {
                            self.partial.drain(..valid);
                            return;
                        }
                        Some(bad) => {
                            self.offset += 1;
                            self.partial.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: &[u8], logprob: f32) -> TokenLogprob {
        TokenLogprob { token: TokenChoice { id: 0, bytes: bytes.to_vec(), logprob }, top: Vec::new() }
    }

    #[test]
    fn inputs_of_every_shape_become_items() {
        let parse = |s: &str| serde_json::from_str::<TextOrTokens>(s).unwrap().into_items();
        assert_eq!(parse(r#""a""#), vec![Item::Text("a".into())]);
        assert_eq!(parse(r#"["a", "b"]"#).len(), 2);
        assert_eq!(parse("[1, 2, 3]"), vec![Item::Tokens(vec![1, 2, 3])]);
        assert_eq!(parse("[[1], [2, 3]]"), vec![Item::Tokens(vec![1]), Item::Tokens(vec![2, 3])]);
        assert!(serde_json::from_str::<TextOrTokens>(r#"["a", 1]"#).is_err());
    }

    #[test]
    fn token_ids_outside_the_vocabulary_are_named() {
        assert_eq!(token_ids(&[0, 9], 10, "input").unwrap(), vec![0, 9]);
        let err = token_ids(&[1, 10], 10, "input[2]").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("input[2][1]"));
        assert!(token_ids(&[-1], 10, "input").is_err());
    }

    #[test]
    fn sampling_fields_are_checked_by_name() {
        let fields = |f: SamplingFields| f.into_params(SamplingParams::default(), 100);
        let bias = |k: &str| Some(HashMap::from([(k.to_string(), 5.0)]));
        assert_eq!(
            fields(SamplingFields { logit_bias: bias("42"), ..Default::default() }).unwrap().logit_bias,
            vec![(42, 5.0)]
        );
        for (f, param) in [
            (SamplingFields { logit_bias: bias("100"), ..Default::default() }, "logit_bias"),
            (SamplingFields { logit_bias: bias("x"), ..Default::default() }, "logit_bias"),
            (SamplingFields { presence_penalty: Some(3.0), ..Default::default() }, "presence_penalty"),
            (SamplingFields { top_p: Some(0.0), ..Default::default() }, "top_p"),
        ] {
            assert_eq!(fields(f).unwrap_err().param.as_deref(), Some(param));
        }
        let p = fields(SamplingFields { seed: Some(-1), temperature: Some(0.0), ..Default::default() }).unwrap();
        assert_eq!((p.seed, p.temperature), (Some(u64::MAX), 0.0));
    }

    #[test]
    fn text_offsets_count_characters_across_split_tokens() {
        let mut shape = CompletionLogprobs::after("Hé");
        let cat = "🐱".as_bytes();
        let v = shape.shape(&[entry(b" a", -0.5), entry(&cat[..2], -1.0), entry(&cat[2..], -0.125), entry(b"!", -2.0)]);
        let v = serde_json::to_value(v).unwrap();
        assert_eq!(v["text_offset"], serde_json::json!([2, 4, 4, 5]));
        assert_eq!(v["token_logprobs"], serde_json::json!([-0.5, -1.0, -0.125, -2.0]));
        assert_eq!(v["tokens"][0], " a");
        assert_eq!(v["top_logprobs"][3]["!"], -2.0, "the chosen token is among the top ones");
        // A later chunk of the same stream runs on from there.
        assert_eq!(shape.shape(&[entry(b"x", 0.0)]).text_offset, [6]);
    }
}
