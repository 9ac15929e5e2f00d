//! `engram bench chat`: time to first token of each turn of one conversation, with the
//! session's attention cache kept between turns and without it, in the same run.
//!
//! Everything is in-process and real: a sled store in a temporary folder, the configured
//! embedder and chat model, and the one chat pipeline the API serves ([`Chat`]). Each
//! pass is its own tenant holding the same seeded memories, and both ask the same
//! questions with greedy replies, so their prompts match turn for turn. The pass
//! "recompute" drops the tenant's caches before every turn, which is what a server
//! without reuse does.

use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::config::Settings;
use crate::memory::chat::{Chat, ChatEvent, ChatTurn};
use crate::memory::service::{MemoryService, NewMemory};
use crate::model::embedder::EmbedderOptions;
use crate::model::generator::GeneratorOptions;
use crate::model::sampling::SamplingParams;
use crate::model::{Embedder, Generator};

/// What the user keeps telling the assistant: long enough that ten turns make a prompt
/// of about 1,500 tokens with the replies and the memories.
const TOPICS: [&str; 10] = [
    "my allotment: I grow tomatoes, beans and courgettes, and the slugs ate half the lettuce this spring",
    "my bicycle commute along the river, twelve kilometres each way, and the puncture I had on Tuesday",
    "the book club: we read a novel about a lighthouse keeper and argued about the ending for an hour",
    "my sister's wedding in September, in a barn near the coast, and the speech I still have to write",
    "learning the cello at forty: scales every morning, and my teacher says my bow hold is too tight",
    "the kitchen renovation: new tiles, a leaking tap, and a plumber who has not called back",
    "the trip to Lisbon we are planning for April, trams, custard tarts and a day in Sintra",
    "my dog Biscuit, a rescue terrier who is afraid of bin lorries and loves cheese",
    "the marathon training plan: long runs on Sundays, intervals on Wednesdays, a sore left knee",
    "the chess club tournament where I lost in the final round to a twelve-year-old",
];

/// Facts stored before the conversation, so that every turn retrieves memories.
const FACTS: [&str; 8] = [
    "The user's allotment is plot 14 at the Ashgrove gardens.",
    "The user's sister is called Maren.",
    "The user cycles a steel touring bike bought second-hand.",
    "The user's cello teacher is called Mr Okafor.",
    "Biscuit the terrier was adopted from the Hillside shelter in 2023.",
    "The user's marathon is in Valencia in December.",
    "The user prefers tea to coffee.",
    "The user's flat is on the third floor without a lift.",
];

pub fn bench_chat(settings: &Settings, turns: usize, reply_tokens: usize, json_out: bool) -> anyhow::Result<()> {
    let dir = tempdir()?;
    let result = run(settings, &dir, turns, reply_tokens, json_out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("engram-bench-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// One turn's figures.
struct TurnFigures {
    prompt_tokens: usize,
    cached_tokens: usize,
    /// From sending the turn to its first text.
    first_token_ms: f64,
    /// The model's prefill alone.
    prefill_ms: f64,
}

fn run(
    settings: &Settings,
    dir: &std::path::Path,
    turns: usize,
    reply_tokens: usize,
    json_out: bool,
) -> anyhow::Result<()> {
    let device = crate::server::resolve_device(&settings.model)?;
    let kind = crate::server::compute_kind(device, settings.model.cuda_dtype);
    let (embedder_kind, matmul_kind) = crate::server::embedder_kinds(device, &settings.model);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut store_config = settings.store_config();
    store_config.backend = crate::store::BackendKind::Sled;
    store_config.data_dir = dir.to_path_buf();
    let store = crate::store::open_backend(&store_config)?;
    let embedder = Embedder::start(
        &settings.model.embedder,
        device,
        embedder_kind,
        EmbedderOptions {
            queue_capacity: 16,
            max_batch_tokens: settings.model.embedder_max_batch_tokens,
            threads: settings.model.threads,
            matmul_kind,
        },
    )?;
    let cache_mb = settings.model.generator_session_cache_mb.max(64);
    let generator = Generator::start(
        &settings.model.generator,
        device,
        kind,
        GeneratorOptions {
            queue_capacity: 4,
            threads: settings.model.threads,
            session_cache_bytes: cache_mb << 20,
            weights: crate::server::weight_format(&settings.model),
        },
    )?;
    let memory = MemoryService::new(
        store.clone(),
        Some(embedder),
        settings.retrieval.clone(),
        settings.limits.clone(),
        settings.memories,
    )?;
    let mut chat_config = settings.chat.clone();
    // No compression during the run: a new summary changes the prompt's prefix, which
    // is a different measurement (it happens once every max_recent_turns / 2 turns).
    chat_config.max_recent_turns = 2 * turns + 2;
    let chat = Chat::new(memory.clone(), generator.clone(), chat_config);
    println!(
        "engram bench chat: {turns} turns of one conversation, replies of up to {reply_tokens} tokens, \
         model {} on {device}, session cache {cache_mb} MiB",
        generator.info().name
    );

    let passes = [("reuse", true), ("recompute", false)];
    let mut figures: Vec<Vec<TurnFigures>> = Vec::new();
    for (tenant, reuse) in passes {
        for fact in FACTS {
            let m = NewMemory { user_id: "ada".into(), text: fact.into(), ..Default::default() };
            runtime.block_on(memory.add(tenant, m))?;
        }
        let mut session = None;
        let mut per_turn = Vec::new();
        for topic in TOPICS.iter().cycle().take(turns) {
            if !reuse {
                generator.forget_scope(tenant);
            }
            let turn = ChatTurn {
                user_id: "ada".into(),
                session_id: session.clone(),
                message: format!("Let me tell you about {topic}. What do you think?"),
                max_tokens: Some(reply_tokens),
                sampling: SamplingParams::greedy(),
                ..Default::default()
            };
            let (figures, session_id) = runtime.block_on(timed_turn(&chat, tenant, turn))?;
            session = Some(session_id);
            per_turn.push(figures);
        }
        figures.push(per_turn);
    }

    println!("turn  prompt  cached | first token: reuse  recompute  ratio | prefill: reuse  recompute");
    let mut rows = Vec::new();
    for (i, (with, without)) in figures[0].iter().zip(&figures[1]).enumerate() {
        let ratio = without.first_token_ms / with.first_token_ms;
        println!(
            "{:>4} {:>7} {:>7} | {:>11.0} ms {:>7.0} ms {:>5.2}x | {:>9.0} ms {:>7.0} ms",
            i + 1,
            with.prompt_tokens,
            with.cached_tokens,
            with.first_token_ms,
            without.first_token_ms,
            ratio,
            with.prefill_ms,
            without.prefill_ms
        );
        rows.push(json!({
            "turn": i + 1, "prompt_tokens": with.prompt_tokens, "cached_tokens": with.cached_tokens,
            "first_token_ms_reuse": with.first_token_ms, "first_token_ms_recompute": without.first_token_ms,
            "prefill_ms_reuse": with.prefill_ms, "prefill_ms_recompute": without.prefill_ms,
        }));
    }
    if json_out {
        println!("{}", json!({ "bench": "chat", "device": device.to_string(), "turns": rows }));
    }
    Ok(())
}

/// Runs one turn through the chat pipeline; the first token's time is the first text event.
async fn timed_turn(chat: &Chat, tenant: &str, turn: ChatTurn) -> anyhow::Result<(TurnFigures, String)> {
    let started = Instant::now();
    let prepared = chat.prepare(tenant, turn).await?;
    let mut events = chat.stream(prepared).await?;
    let mut first = None;
    while let Some(event) = events.recv().await {
        match event {
            ChatEvent::Delta(..) => {
                first.get_or_insert_with(|| started.elapsed());
            }
            ChatEvent::Done(outcome, _) => {
                let first = first.unwrap_or_else(|| started.elapsed());
                let figures = TurnFigures {
                    prompt_tokens: outcome.generation.prompt_tokens,
                    cached_tokens: outcome.generation.cached_tokens,
                    first_token_ms: first.as_secs_f64() * 1e3,
                    prefill_ms: outcome.generation.prefill.as_secs_f64() * 1e3,
                };
                return Ok((figures, outcome.session_id));
            }
            ChatEvent::Failed(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the chat turn ended without an outcome")
}
