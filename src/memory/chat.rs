//! One chat turn with memory: retrieve what the user's long-term memory holds about the
//! new message, assemble the working memory (system prompt, memories, the session's
//! rolling summary, recent turns, the message) under the token budget, generate the
//! reply, and write the exchange back — as turns of the session (short-term memory)
//! and as an episodic memory (long-term). A session whose recent turns pass the limit
//! has its oldest half condensed by the model into the rolling summary, which is also
//! stored as a `summary` memory: older turns are compressed, never silently dropped.
//!
//! One pipeline serves every caller: [`Chat::prepare`] then [`Chat::stream`], a stream
//! of [`ChatEvent`]s (text deltas, then the outcome once written back); [`Chat::turn`]
//! collects it, the HTTP layer forwards it as server-sent events.
//!
//! Guarantees:
//! - turns of one session run one at a time (the session's lock is held from `prepare`
//!   to the end of the write-back), so concurrent turns each keep their exchange;
//! - the write-back is one guarded commit — session turns, episodic memory, access
//!   counts — that fails, writing nothing, if the user was erased or the session deleted
//!   since the turn began;
//! - a caller that goes away before the reply is complete gets nothing written back.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use ulid::Ulid;

use super::compression::summary_prompt;
use super::context::{self, AssembledContext, ContextRequest};
use super::keyed_lock::KeyGuard;
use super::ranking::Mode;
use super::service::{blocking, write_with_found_supersession, MemoryError, MemoryService, SearchQuery, TimeView};
use super::sessions::session_digest;
use crate::model::generator::{GenerateRequest, GenerationEvent, GenerationSummary, TokenLogprob};
use crate::model::prompt_cache::CacheKey;
use crate::model::sampling::SamplingParams;
use crate::model::Generator;
use crate::store::records::{
    memory_entry::Source, now_ms, ulid_from_bytes, Kind, MemoryEntry, Scope, Session, SessionSource, Turn,
};
use crate::store::{
    CommitObserver, Committed, MemoryStore, NewEntry, Precondition, SessionWrite, StoreError, WriteBatch,
};

/// The most tokens a rolling summary may take.
const SUMMARY_MAX_TOKENS: usize = 160;

/// `[chat]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    pub system_prompt: String,
    pub context_tokens: usize,
    pub max_tokens: usize,
    pub retrieve_k: usize,
    pub min_score: f32,
    pub max_recent_turns: usize,
    /// The HTTP header naming the user for OpenAI-style requests that carry neither
    /// `user` nor `safety_identifier`.
    pub user_header: String,
    /// Report which memories each reply attended to (`memories[].attribution`), and
    /// count a use only of those: see [`USED_ATTENTION`]. Costs decode speed.
    pub attribution: bool,
}

/// A memory counts as used by a reply (its access statistics are raised) when its tokens
/// got at least this much attention per token against an even spread over the prompt
/// ([`crate::model::generator::SpanAttention::lift`]). Most of a reply's attention goes
/// to a few positions (the start of the sequence, the question, the reply so far), and
/// a memory line's date prefix gets little. Measured on SmolLM2-135M with the memories
/// of `tests/attribution.rs` (the log at debug level shows each memory's lift): lines a
/// reply copied from 0.51–0.66; the other lines 0.10–0.22, up to 0.33 beside a confused
/// reply; every line of a greeting's prompt under 0.14.
pub const USED_ATTENTION: f32 = 0.35;

/// One turn as asked.
#[derive(Debug, Clone, Default)]
pub struct ChatTurn {
    pub user_id: String,
    pub agent_id: String,
    pub session_id: Option<String>,
    pub message: String,
    pub max_tokens: Option<usize>,
    /// How the reply's tokens are chosen, and where it stops (never shown).
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Report the reply's token log-probabilities, with this many alternatives.
    pub logprobs: Option<usize>,
    /// Earlier (role, content) turns the client keeps itself (OpenAI-style requests).
    /// Without a `session_id`, the user's session holding exactly these turns is
    /// continued; when there is none, they seed a new session's history.
    pub prior_turns: Vec<(String, String)>,
    /// The client's own system prompt for this turn, in place of the configured one.
    pub system_prompt: Option<String>,
}

/// A turn ready to generate: its session, the memories chosen and the prompt. Holds the
/// session's lock until the turn ends.
pub struct PreparedTurn {
    turn: ChatTurn,
    session: Session,
    /// Guards the write-back against an erase of the user meanwhile.
    erase_guard: Precondition,
    _session_lock: KeyGuard,
    pub session_id: String,
    pub memories: Vec<UsedMemory>,
    pub context: AssembledContext,
    /// The generation to run (prompt, limits, sampling).
    pub request: GenerateRequest,
    pub retrieve_ms: u64,
}

/// A memory that went into the prompt.
#[derive(Debug, Clone, Serialize)]
pub struct UsedMemory {
    pub id: String,
    pub kind: String,
    pub score: f32,
    pub text: String,
    /// The share of the reply's attention its tokens got (see
    /// [`crate::model::attention_probe`]); `None` when attribution is off.
    pub attribution: Option<f32>,
    /// Whether the reply used it (see [`USED_ATTENTION`]); every memory placed in the
    /// prompt counts as used when attribution is off.
    pub used: bool,
}

/// What a turn produced.
#[derive(Debug, Clone)]
pub struct ChatOutcome {
    pub session_id: String,
    pub reply: String,
    pub memories: Vec<UsedMemory>,
    pub context: AssembledContext,
    pub generation: GenerationSummary,
    pub retrieve_ms: u64,
    pub generate_ms: u64,
}

/// What [`Chat::stream`] yields: text as it is generated, then exactly one of
/// `Done` (the exchange is written back) or `Failed`. When the turn asked for
/// log-probabilities, each event carries those of the tokens generated since the one
/// before (tokens that made no text yet, such as half a character, come later).
#[derive(Debug)]
pub enum ChatEvent {
    Delta(String, Vec<TokenLogprob>),
    Done(Box<ChatOutcome>, Vec<TokenLogprob>),
    Failed(MemoryError),
}

/// See the module documentation.
#[derive(Clone)]
pub struct Chat {
    memory: MemoryService,
    generator: Generator,
    config: ChatConfig,
}

impl Chat {
    /// Also makes the model forget a session's attention cache whenever memories written
    /// from that session are removed (the session deleted, the user erased) — on this
    /// node or, with a shared store, on any.
    pub fn new(memory: MemoryService, generator: Generator, config: ChatConfig) -> Self {
        memory.store().observe(Arc::new(CacheForgetter { generator: generator.clone() }));
        Self { memory, generator, config }
    }

    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Runs one turn to the end.
    pub async fn turn(&self, tenant: &str, turn: ChatTurn) -> Result<ChatOutcome, MemoryError> {
        let prepared = self.prepare(tenant, turn).await?;
        let mut events = self.stream(prepared).await?;
        let mut logprobs = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                ChatEvent::Delta(_, l) => logprobs.extend(l),
                ChatEvent::Done(mut outcome, l) => {
                    logprobs.extend(l);
                    outcome.generation.logprobs = logprobs;
                    return Ok(*outcome);
                }
                ChatEvent::Failed(e) => return Err(e),
            }
        }
        Err(MemoryError::Internal("the chat turn ended without an outcome".into()))
    }

    /// Retrieves, and assembles the prompt: everything before generation. Waits for the
    /// session's earlier turns to finish first.
    #[tracing::instrument(name = "chat.prepare", skip_all)]
    pub async fn prepare(&self, tenant: &str, mut turn: ChatTurn) -> Result<PreparedTurn, MemoryError> {
        if turn.user_id.is_empty() {
            return Err(MemoryError::Invalid("user_id is required".into()));
        }
        if turn.message.trim().is_empty() {
            return Err(MemoryError::Invalid("message is empty".into()));
        }
        let limits = self.memory.limits();
        limits.check_len("message", &turn.message, limits.message_bytes, "message_bytes")?;
        if turn.session_id.is_none() && !turn.prior_turns.is_empty() {
            // A client re-sending the whole conversation continues the session it is.
            let found = self.memory.find_session_by_turns(tenant, &turn.user_id, &turn.prior_turns).await?;
            turn.session_id = found.map(|s| s.id);
        }
        let session_id = turn.session_id.clone().unwrap_or_else(|| Ulid::new().to_string());
        let session_lock = self.memory.lock_session(tenant, &session_id).await;
        let erase_guard = self.memory.erase_guard(tenant, &turn.user_id).await?;
        let mut session =
            self.memory.open_session(tenant, &turn.user_id, &turn.agent_id, Some(session_id.clone())).await?;
        if session.turns.is_empty() {
            let now = now_ms();
            session.turns = turn
                .prior_turns
                .iter()
                .map(|(role, content)| Turn {
                    role: role.clone(),
                    content: content.clone(),
                    created_at_ms: now,
                    ..Default::default()
                })
                .collect();
        }
        let started = Instant::now();
        let found = self.memory.search(tenant, self.retrieval_query(&turn)).await?;
        // Turns still in the session's short-term memory are in the window already.
        let in_window = |e: &MemoryEntry| match &e.source {
            Some(Source::Session(s)) => s.session_id == session.id && s.turn_index >= session.summarized_turns,
            _ => false,
        };
        let found: Vec<_> = found.into_iter().filter(|f| !in_window(&f.entry)).collect();
        let retrieve_ms = started.elapsed().as_millis() as u64;

        let memories: Vec<context::Memory> = found
            .iter()
            .map(|f| context::Memory {
                id: f.entry.ulid().map(|u| u.to_string()).unwrap_or_default(),
                kind: f.entry.kind().name().to_owned(),
                text: f.entry.text.clone(),
                created_at_ms: f.entry.created_at_ms,
                valid_since_ms: (!f.entry.supersedes.is_empty() || f.entry.valid_from_ms.is_some())
                    .then(|| f.entry.valid_since_ms()),
                source: source_label(&f.entry),
                score: f.score,
            })
            .collect();
        let recent: Vec<context::Turn> = session
            .turns
            .iter()
            .skip(session.summarized_turns as usize)
            .map(|t| context::Turn { role: t.role.clone(), content: t.content.clone() })
            .collect();
        let max_tokens = turn.max_tokens.unwrap_or(self.config.max_tokens);
        let window = self.config.context_tokens.min(self.generator.info().context_length);
        let system_prompt = turn.system_prompt.clone().unwrap_or_else(|| self.config.system_prompt.clone());
        let (generator, summary, message) =
            (self.generator.clone(), session.rolling_summary.clone(), turn.message.clone());
        // Rendering and counting tokens over a long history is real work: off the
        // async workers.
        let assembled = tokio::task::spawn_blocking(move || {
            context::assemble(
                &ContextRequest {
                    system_prompt: &system_prompt,
                    memories: &memories,
                    rolling_summary: Some(summary.as_str()),
                    recent_turns: &recent,
                    message: &message,
                    context_window: window,
                    reply_reserve: max_tokens.min(window / 2),
                },
                &generator,
            )
        })
        .await
        .map_err(|e| MemoryError::Internal(format!("assembling the prompt failed: {e}")))?
        .map_err(|e| MemoryError::Invalid(e.to_string()))?;

        let request = GenerateRequest {
            prompt: assembled.prompt.clone(),
            max_tokens,
            sampling: turn.sampling.clone(),
            stop: turn.stop.clone(),
            logprobs: turn.logprobs,
            cache_key: Some(CacheKey { scope: tenant.to_owned(), session: session.id.clone() }),
            attend_spans: if self.config.attribution { assembled.memory_spans.clone() } else { Vec::new() },
            ..Default::default()
        };
        let memories: Vec<UsedMemory> = found
            .iter()
            .filter(|f| f.entry.ulid().is_some_and(|u| assembled.used_memories.contains(&u.to_string())))
            .map(|f| UsedMemory {
                id: f.entry.ulid().map(|u| u.to_string()).unwrap_or_default(),
                kind: f.entry.kind().name().to_owned(),
                score: f.score,
                text: f.entry.text.clone(),
                attribution: None,
                used: true,
            })
            .collect();
        Ok(PreparedTurn {
            session_id: session.id.clone(),
            turn,
            session,
            erase_guard,
            _session_lock: session_lock,
            memories,
            context: assembled,
            request,
            retrieve_ms,
        })
    }

    /// The search a turn runs over the user's long-term memory.
    fn retrieval_query(&self, turn: &ChatTurn) -> SearchQuery {
        SearchQuery {
            query: turn.message.clone(),
            user_id: Some(turn.user_id.clone()),
            session_id: None,
            kinds: Vec::new(),
            k: self.config.retrieve_k.max(1),
            min_score: self.config.min_score,
            metadata: Default::default(),
            created_after_ms: None,
            created_before_ms: None,
            mode: Mode::Hybrid,
            // An agent recalls its own memories and the user's memories of no agent.
            agent_ids: if turn.agent_id.is_empty() { Vec::new() } else { vec![turn.agent_id.clone(), String::new()] },
            time: TimeView::default(),
        }
    }

    /// Starts generating a prepared turn; the events follow on the returned channel.
    /// Fails at once when the model refuses the request (queue full, prompt too long).
    /// Dropping the receiver cancels the turn: the generation stops, nothing is written.
    pub async fn stream(&self, prepared: PreparedTurn) -> Result<mpsc::Receiver<ChatEvent>, MemoryError> {
        let started = Instant::now();
        let mut generation = self.generator.generate(prepared.request.clone()).await?;
        let (tx, rx) = mpsc::channel(64);
        let chat = self.clone();
        tokio::spawn(async move {
            let (mut reply, mut logprobs) = (String::new(), Vec::new());
            while let Some(event) = generation.recv().await {
                match event {
                    GenerationEvent::Logprob(l) => logprobs.push(l),
                    GenerationEvent::Text(t) => {
                        reply.push_str(&t);
                        if tx.send(ChatEvent::Delta(t, std::mem::take(&mut logprobs))).await.is_err() {
                            return; // the caller left: dropping `generation` stops it
                        }
                    }
                    GenerationEvent::Done(summary) => {
                        if tx.is_closed() {
                            return;
                        }
                        let ms = started.elapsed().as_millis() as u64;
                        let event = match chat.finish(prepared, reply, summary, ms).await {
                            Ok(outcome) => ChatEvent::Done(Box::new(outcome), logprobs),
                            Err(e) => ChatEvent::Failed(e),
                        };
                        let _ = tx.send(event).await;
                        return;
                    }
                    GenerationEvent::Failed(reason) => {
                        let err = crate::model::EngineError::Runtime { model: "chat model", reason };
                        let _ = tx.send(ChatEvent::Failed(err.into())).await;
                        return;
                    }
                }
            }
            let _ = tx.send(ChatEvent::Failed(crate::model::EngineError::Stopped("chat model").into())).await;
        });
        Ok(rx)
    }

    /// Writes the generated reply back and reports the turn.
    async fn finish(
        &self,
        mut prepared: PreparedTurn,
        reply: String,
        generation: GenerationSummary,
        generate_ms: u64,
    ) -> Result<ChatOutcome, MemoryError> {
        let reply = reply.trim().to_owned();
        let session_id = prepared.session_id.clone();
        attribute(&mut prepared.memories, &prepared.context, &generation);
        let written = self.write_back(&prepared, &reply).await?;
        if written.turns.len() - written.summarized_turns as usize > self.config.max_recent_turns.max(2) {
            // The exchange is stored already; a summary that cannot be made now is made
            // at a later turn, and must not fail this one.
            if let Err(e) = self.compress(&prepared, written).await {
                tracing::warn!(session = %session_id, error = %e, "session compression failed; retried next turn");
            }
        }
        let PreparedTurn { memories, context, retrieve_ms, .. } = prepared;
        Ok(ChatOutcome { session_id, reply, memories, context, generation, retrieve_ms, generate_ms })
    }

    /// Stores the exchange — two turns of the session, an episodic memory, the use of
    /// the retrieved memories — in one guarded commit. Returns the session as stored.
    async fn write_back(&self, prepared: &PreparedTurn, reply: &str) -> Result<Session, MemoryError> {
        let now = now_ms();
        let mut session = prepared.session.clone();
        let expected_revision = session.revision;
        let turn_index = session.turns.len() as u32;
        for (role, content) in [("user", prepared.turn.message.as_str()), ("assistant", reply)] {
            session.turns.push(Turn {
                role: role.into(),
                content: content.to_owned(),
                created_at_ms: now,
                ..Default::default()
            });
        }
        session.updated_at_ms = now;
        session.transcript_digest = session_digest(&session).into();
        let exchange = format!("User: {}\nAssistant: {}", prepared.turn.message, reply);
        let episodic = self.session_memory(&session, exchange, Kind::Episodic, turn_index).await?;
        // What the user said may update a fact they stored ("we moved to Porto"): the
        // message alone is compared, since the reply states nothing about the user.
        let supersedes = match self.memory.auto_supersede() {
            true => {
                let t = &prepared.turn;
                let said = self.memory.embed_many(vec![t.message.clone()]).await?.pop().unwrap_or_default();
                self.memory.updated_facts(&session_tenant(&session), &t.user_id, &t.agent_id, &t.message, &said).await?
            }
            false => Vec::new(),
        };
        let batch = WriteBatch {
            preconditions: vec![prepared.erase_guard.clone()],
            entries: vec![episodic],
            session: Some(SessionWrite { session: session.clone(), expected_revision }),
            accessed: prepared.memories.iter().filter(|m| m.used).filter_map(|m| m.id.parse().ok()).collect(),
            supersedes,
            ..Default::default()
        };
        let store = self.memory.store().clone();
        let outcome = blocking(move || write_with_found_supersession(&*store, batch)).await?;
        session.revision = outcome.session_revision.unwrap_or_default();
        Ok(session)
    }

    /// Folds the oldest half of the recent turns into the rolling summary (as many as
    /// fit the model's window: see [`super::compression`]), in one guarded commit.
    async fn compress(&self, prepared: &PreparedTurn, mut session: Session) -> Result<(), MemoryError> {
        let start = session.summarized_turns as usize;
        let recent: Vec<(String, String)> =
            session.turns[start..].iter().map(|t| (t.role.clone(), t.content.clone())).collect();
        let want = recent.len() / 2;
        let window = self.config.context_tokens.min(self.generator.info().context_length);
        let budget = window.saturating_sub(SUMMARY_MAX_TOKENS);
        let (generator, previous) = (self.generator.clone(), session.rolling_summary.clone());
        let prompt = tokio::task::spawn_blocking(move || summary_prompt(&previous, &recent, want, budget, &generator))
            .await
            .map_err(|e| MemoryError::Internal(format!("building the summary prompt failed: {e}")))?;
        let Some(prompt) = prompt else { return Ok(()) };
        let request = GenerateRequest {
            prompt: prompt.prompt,
            max_tokens: SUMMARY_MAX_TOKENS,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let (summary, _) = self.generator.generate_text(request).await?;
        let summary = summary.trim();
        // A model that says nothing must not make the turns vanish: keep them instead.
        if summary.is_empty() {
            return Ok(());
        }
        let expected_revision = session.revision;
        session.rolling_summary = summary.to_owned();
        session.summarized_turns = (start + prompt.folded) as u32;
        let memory = self.session_memory(&session, summary.to_owned(), Kind::Summary, start as u32).await?;
        let batch = WriteBatch {
            preconditions: vec![prepared.erase_guard.clone()],
            entries: vec![memory],
            session: Some(SessionWrite { session, expected_revision }),
            ..Default::default()
        };
        let store = self.memory.store().clone();
        blocking(move || -> Result<_, StoreError> { store.write(batch) }).await?;
        Ok(())
    }

    /// A memory written from turn `turn_index` of `session`, embedded.
    async fn session_memory(
        &self,
        session: &Session,
        text: String,
        kind: Kind,
        turn_index: u32,
    ) -> Result<NewEntry, MemoryError> {
        let scope = session.scope.clone().unwrap_or_default();
        let embedding = self.memory.embed_many(vec![text.clone()]).await?.pop().unwrap_or_default();
        Ok(NewEntry {
            kind: Some(kind),
            text,
            embedding,
            scope: Scope { session_id: session.id.clone(), ..scope },
            source: Some(Source::Session(SessionSource { session_id: session.id.clone(), turn_index })),
            ..Default::default()
        })
    }
}

/// The tenant a session belongs to.
fn session_tenant(session: &Session) -> String {
    session.scope.as_ref().map(|s| s.tenant.clone()).unwrap_or_default()
}

/// Drops the attention cache of every session whose memories a commit removes.
struct CacheForgetter {
    generator: Generator,
}

impl CommitObserver for CacheForgetter {
    fn committed(&self, _store: &dyn MemoryStore, change: &Committed) {
        for entry in change.removed {
            let (Some(scope), Some(Source::Session(source))) = (&entry.scope, &entry.source) else { continue };
            self.generator.forget_session(&scope.tenant, &source.session_id);
        }
    }
}

/// "session <id>" or "document <id>", for the memory's label in the prompt.
fn source_label(e: &MemoryEntry) -> Option<String> {
    match &e.source {
        Some(Source::Session(s)) => Some(format!("session {}", s.session_id)),
        Some(Source::Document(d)) => ulid_from_bytes(&d.document_id).map(|u| format!("document {u}")),
        None => None,
    }
}

/// Fills in each memory's attribution from the generation's attention shares, which
/// follow `context.used_memories` (the prompt's order).
fn attribute(memories: &mut [UsedMemory], context: &AssembledContext, generation: &GenerationSummary) {
    if generation.attention.len() != context.used_memories.len() {
        return; // attribution off, or the memories could not be placed in the prompt
    }
    for m in memories.iter_mut() {
        if let Some(i) = context.used_memories.iter().position(|id| *id == m.id) {
            let got = generation.attention[i];
            m.attribution = Some(got.share);
            m.used = got.lift(generation.prompt_tokens) >= USED_ATTENTION;
            tracing::debug!(memory = %m.id, share = got.share, tokens = got.tokens, lift = got.lift(generation.prompt_tokens), "attribution");
        }
    }
}
