//! The attention cache kept between a session's turns, on the real chat model
//! (SmolLM2-135M): a conversation replied to greedily gives the same replies with the
//! cache as without it, each turn after the first computes only what follows the prefix
//! it shares with the previous one, and a forgotten session reuses nothing of its own.

use std::path::PathBuf;

use engram::model::chat_template::ChatMessage;
use engram::model::generator::{GenerateRequest, GenerationSummary, GeneratorOptions};
use engram::model::llama::ATTENTION_BLOCK;
use engram::model::llama_loader::WeightFormat;
use engram::model::prompt_cache::CacheKey;
use engram::model::sampling::SamplingParams;
use engram::model::{DeviceSpec, Generator};

fn generator(cache_mb: usize) -> Generator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let device = DeviceSpec::Cpu.resolve().unwrap();
    let opts = GeneratorOptions {
        queue_capacity: 4,
        threads: 0,
        session_cache_bytes: cache_mb << 20,
        weights: WeightFormat::Quantized,
    };
    Generator::start(&path, device, tch::Kind::Float, opts).unwrap()
}

fn key(scope: &str, session: &str) -> CacheKey {
    CacheKey { scope: scope.into(), session: session.into() }
}

/// Longer than one attention block (64 tokens), so that sessions have a reusable prefix in
/// common.
const SYSTEM: &str = "You are a helpful assistant for people who keep bees, grow vegetables and look after \
                      gardens. Answer in one or two short sentences, plainly, without lists. Remember what \
                      the user tells you about themselves, their garden, their hives and their plans, and \
                      use it when they ask. If you do not know something, say so rather than guess. Be \
                      kind, practical and brief.";

/// Runs the user's messages as one conversation, greedily; returns each reply and its
/// summary.
fn converse(
    rt: &tokio::runtime::Runtime,
    g: &Generator,
    key: Option<CacheKey>,
    messages: &[&str],
) -> Vec<(String, GenerationSummary)> {
    let mut history = vec![ChatMessage::new("system", SYSTEM)];
    let mut out = Vec::new();
    for message in messages {
        history.push(ChatMessage::new("user", *message));
        let prompt = g.render_chat(&history, true).unwrap();
        let request = GenerateRequest {
            prompt,
            max_tokens: 24,
            sampling: SamplingParams::greedy(),
            cache_key: key.clone(),
            logprobs: Some(0),
            ..Default::default()
        };
        let (reply, summary) = rt.block_on(g.generate_text(request)).unwrap();
        history.push(ChatMessage::new("assistant", reply.trim()));
        out.push((reply, summary));
    }
    out
}

const MESSAGES: [&str; 4] = [
    "Hi! My name is Ada and I keep bees in my garden in Lyon.",
    "What do bees need in winter?",
    "I also grow lavender next to the hives. Is that a good idea?",
    "What is my name, and where do I live?",
];

#[test]
fn greedy_replies_are_the_same_with_and_without_the_session_cache() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let g = generator(256);
    let cached = converse(&rt, &g, Some(key("t", "a")), &MESSAGES);
    let fresh = converse(&rt, &g, None, &MESSAGES);
    for (turn, ((with, s_with), (without, s_without))) in cached.iter().zip(&fresh).enumerate() {
        assert_eq!(with, without, "turn {turn}: the reply changed with the cache");
        // Not only the same choices: the same numbers, bit for bit (the quantised products
        // and the block-aligned attention do not depend on how the prompt was split).
        let logprobs = |s: &GenerationSummary| s.logprobs.iter().map(|l| l.token.logprob.to_bits()).collect::<Vec<_>>();
        assert_eq!(logprobs(s_with), logprobs(s_without), "turn {turn}: log-probabilities differ");
        assert_eq!(s_with.prompt_tokens, s_without.prompt_tokens);
        assert_eq!(s_without.cached_tokens, 0, "turn {turn}: no key must reuse nothing");
        if turn == 0 {
            assert_eq!(s_with.cached_tokens, 0, "the first turn has nothing to reuse");
        } else {
            // The previous prompt is this one's prefix, and is reused in whole attention
            // blocks (the previous reply's tokens are computed again: see the generator).
            let previous = cached[turn - 1].1.prompt_tokens;
            assert_eq!(
                s_with.cached_tokens,
                previous / ATTENTION_BLOCK * ATTENTION_BLOCK,
                "turn {turn}: {} of {} tokens reused, previous prompt {previous}",
                s_with.cached_tokens,
                s_with.prompt_tokens
            );
        }
    }
    assert_eq!(g.prompt_cache_stats().sessions, 1);
}

#[test]
fn a_forgotten_session_starts_over_and_scopes_share_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let g = generator(256);
    let first = converse(&rt, &g, Some(key("t", "a")), &MESSAGES[..2]);
    let own_reuse = first[1].1.cached_tokens;
    assert!(own_reuse > 0);

    // Another session of the same scope starts from the shared system prompt only.
    let other = converse(&rt, &g, Some(key("t", "b")), &["Tell me about owls."]);
    let system_tokens = g.count_tokens(&g.render_chat(&[ChatMessage::new("system", SYSTEM)], false).unwrap());
    let shared = other[0].1.cached_tokens;
    assert!(
        shared >= ATTENTION_BLOCK && shared <= system_tokens + 3,
        "{shared} shared, system prompt {system_tokens} tokens"
    );
    // Another scope: nothing, though its prompt is the same.
    let stranger = converse(&rt, &g, Some(key("u", "a")), &MESSAGES[..1]);
    assert_eq!(stranger[0].1.cached_tokens, 0);

    // Forgetting session a: its next turn finds only what b shares with it.
    g.forget_session("t", "a");
    let again = converse(&rt, &g, Some(key("t", "a")), &MESSAGES[..2]);
    assert!(again[0].1.cached_tokens <= system_tokens + 3);
    // A whole scope.
    g.forget_scope("t");
    let after = converse(&rt, &g, Some(key("t", "c")), &MESSAGES[..1]);
    assert_eq!(after[0].1.cached_tokens, 0);
    let stats = g.prompt_cache_stats();
    assert_eq!(stats.sessions, 2, "u/a and t/c remain: {stats:?}");
}
