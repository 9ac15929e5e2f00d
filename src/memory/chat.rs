//! One chat turn with memory: retrieve what the user's long-term memory holds about the
//! new message, assemble the working memory (system prompt, memories, the session's
//! rolling summary, recent turns, the message) under the token budget, generate the
//! reply, and write the exchange back — as turns of the session (short-term memory)
//! and as an episodic memory (long-term). A session whose recent turns pass the limit
//! has its oldest half condensed by the model into the rolling summary, which is also
//! stored as a `summary` memory: older turns are compressed, never silently dropped.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::context::{self, AssembledContext, ContextRequest};
use super::ranking::Mode;
use super::service::{blocking, MemoryError, MemoryService, NewMemory, SearchQuery};
use crate::model::chat_template::ChatMessage;
use crate::model::generator::{GenerateRequest, GenerationSummary};
use crate::model::sampling::SamplingParams;
use crate::model::Generator;
use crate::store::records::{
    memory_entry::Source, now_ms, ulid_from_bytes, Kind, MemoryEntry, Session, SessionSource, Turn,
};
use crate::store::StoreError;

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
}

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
    /// Earlier (role, content) turns the client keeps itself (OpenAI-style requests):
    /// they seed a new session's history. Ignored for a session that has turns.
    pub prior_turns: Vec<(String, String)>,
    /// The client's own system prompt for this turn, in place of the configured one.
    pub system_prompt: Option<String>,
}

/// A turn ready to generate: its session, the memories chosen and the prompt.
pub struct PreparedTurn {
    turn: ChatTurn,
    session: Session,
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

/// See the module documentation.
#[derive(Clone)]
pub struct Chat {
    memory: MemoryService,
    generator: Generator,
    config: ChatConfig,
}

impl Chat {
    pub fn new(memory: MemoryService, generator: Generator, config: ChatConfig) -> Self {
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
        let started = Instant::now();
        let (reply, generation) = self.generator.generate_text(prepared.request.clone()).await?;
        let generate_ms = started.elapsed().as_millis() as u64;
        self.finish(tenant, prepared, reply, generation, generate_ms).await
    }

    /// Retrieves, and assembles the prompt: everything before generation.
    pub async fn prepare(&self, tenant: &str, turn: ChatTurn) -> Result<PreparedTurn, MemoryError> {
        if turn.user_id.is_empty() {
            return Err(MemoryError::Invalid("user_id is required".into()));
        }
        if turn.message.trim().is_empty() {
            return Err(MemoryError::Invalid("message is empty".into()));
        }
        let mut session =
            self.memory.open_session(tenant, &turn.user_id, &turn.agent_id, turn.session_id.clone()).await?;
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
        let found = self
            .memory
            .search(
                tenant,
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
                },
            )
            .await?;
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
                source: source_label(&f.entry),
                score: f.score,
            })
            .collect();
        let recent: Vec<context::Turn> = session.turns[session.summarized_turns as usize..]
            .iter()
            .map(|t| context::Turn { role: t.role.clone(), content: t.content.clone() })
            .collect();
        let max_tokens = turn.max_tokens.unwrap_or(self.config.max_tokens);
        let window = self.config.context_tokens.min(self.generator.info().context_length);
        let assembled = context::assemble(
            &ContextRequest {
                system_prompt: turn.system_prompt.as_deref().unwrap_or(&self.config.system_prompt),
                memories: &memories,
                rolling_summary: Some(session.rolling_summary.as_str()),
                recent_turns: &recent,
                message: &turn.message,
                context_window: window,
                reply_reserve: max_tokens.min(window / 2),
            },
            &self.generator,
        )
        .map_err(|e| MemoryError::Invalid(e.to_string()))?;

        let request = GenerateRequest {
            prompt: assembled.prompt.clone(),
            max_tokens,
            sampling: turn.sampling.clone(),
            stop: turn.stop.clone(),
            logprobs: turn.logprobs,
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
            })
            .collect();
        Ok(PreparedTurn {
            session_id: session.id.clone(),
            turn,
            session,
            memories,
            context: assembled,
            request,
            retrieve_ms,
        })
    }

    /// Writes the generated reply back and reports the turn.
    pub async fn finish(
        &self,
        tenant: &str,
        prepared: PreparedTurn,
        reply: String,
        generation: GenerationSummary,
        generate_ms: u64,
    ) -> Result<ChatOutcome, MemoryError> {
        let PreparedTurn { turn, mut session, memories, context, retrieve_ms, .. } = prepared;
        let reply = reply.trim().to_owned();
        self.write_back(tenant, &turn, &mut session, &reply, &memories).await?;
        Ok(ChatOutcome {
            session_id: session.id.clone(),
            reply,
            memories,
            context,
            generation,
            retrieve_ms,
            generate_ms,
        })
    }

    /// Stores the exchange (turns + an episodic memory), counts the use of the retrieved
    /// memories, and compresses the session when it grew past its limit.
    async fn write_back(
        &self,
        tenant: &str,
        turn: &ChatTurn,
        session: &mut Session,
        reply: &str,
        used: &[UsedMemory],
    ) -> Result<(), MemoryError> {
        let now = now_ms();
        let turn_index = session.turns.len() as u32;
        session.turns.push(Turn {
            role: "user".into(),
            content: turn.message.clone(),
            created_at_ms: now,
            ..Default::default()
        });
        session.turns.push(Turn {
            role: "assistant".into(),
            content: reply.to_owned(),
            created_at_ms: now,
            ..Default::default()
        });
        session.updated_at_ms = now;
        let exchange = format!("User: {}\nAssistant: {}", turn.message, reply);
        self.store_memory(tenant, session, &exchange, Kind::Episodic, turn_index).await?;
        if session.turns.len() - session.summarized_turns as usize > self.config.max_recent_turns.max(2) {
            self.compress(tenant, session).await?;
        }
        let store = self.memory.store().clone();
        let saved = session.clone();
        let ids: Vec<Ulid> = used.iter().filter_map(|m| m.id.parse().ok()).collect();
        blocking(move || -> Result<(), StoreError> {
            store.put_session(&saved)?;
            store.record_access(&ids, now)
        })
        .await
    }

    /// Folds the oldest half of the recent turns into the rolling summary.
    async fn compress(&self, tenant: &str, session: &mut Session) -> Result<(), MemoryError> {
        let start = session.summarized_turns as usize;
        let recent = session.turns.len() - start;
        // An even count keeps user/assistant pairs together.
        let fold = (recent / 2) & !1;
        if fold == 0 {
            return Ok(());
        }
        let transcript: String =
            session.turns[start..start + fold].iter().map(|t| format!("{}: {}\n", t.role, t.content)).collect();
        let mut instruction = String::from(
            "Summarize the conversation below in a few sentences. Keep every fact about the user \
             (names, places, preferences, plans).\n\n",
        );
        if !session.rolling_summary.is_empty() {
            instruction += &format!("Summary so far: {}\n\n", session.rolling_summary);
        }
        instruction += &transcript;
        let prompt = self.generator.render_chat(&[ChatMessage::new("user", instruction)], true)?;
        let request =
            GenerateRequest { prompt, max_tokens: 160, sampling: SamplingParams::greedy(), ..Default::default() };
        let (summary, _) = self.generator.generate_text(request).await?;
        let summary = summary.trim();
        // A model that says nothing must not make the turns vanish: keep them instead.
        if summary.is_empty() {
            return Ok(());
        }
        session.rolling_summary = summary.to_owned();
        session.summarized_turns = (start + fold) as u32;
        self.store_memory(tenant, session, summary, Kind::Summary, start as u32).await
    }

    async fn store_memory(
        &self,
        tenant: &str,
        session: &Session,
        text: &str,
        kind: Kind,
        turn_index: u32,
    ) -> Result<(), MemoryError> {
        let scope = session.scope.clone().unwrap_or_default();
        let new = NewMemory {
            user_id: scope.user_id,
            agent_id: scope.agent_id,
            session_id: session.id.clone(),
            text: text.to_owned(),
            kind: Some(kind),
            ..Default::default()
        };
        self.memory
            .add_with_source(
                tenant,
                new,
                Some(Source::Session(SessionSource { session_id: session.id.clone(), turn_index })),
            )
            .await
            .map(|_| ())
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
