//! Importing past conversation into a session without generating: each message becomes
//! a turn of the session and an episodic memory of its user (migrating chat history,
//! or loading a benchmark's dialogues).

use ulid::Ulid;

use super::service::{blocking, MemoryError, MemoryService};
use crate::store::records::{memory_entry::Source, now_ms, Kind, MemoryEntry, Scope, Session, SessionSource, Turn};
use crate::store::{NewEntry, StoreError};

/// One message to import.
#[derive(Debug, Clone)]
pub struct ImportedMessage {
    pub role: String,
    pub content: String,
    pub name: Option<String>,
    pub created_at_ms: Option<i64>,
    pub metadata: serde_json::Value,
}

/// Most messages one import call takes.
pub const MAX_IMPORT: usize = 1000;

impl MemoryService {
    /// Session `id` of this user, or a new one when there is none by that id (a fresh
    /// id when `id` is `None`). A session of another user is reported as absent.
    pub async fn open_session(
        &self,
        tenant: &str,
        user_id: &str,
        agent_id: &str,
        id: Option<String>,
    ) -> Result<Session, MemoryError> {
        let id = id.unwrap_or_else(|| Ulid::new().to_string());
        let (store, t, s) = (self.store().clone(), tenant.to_owned(), id.clone());
        let found = blocking(move || store.get_session(&t, &s)).await?;
        match found {
            Some(session) if session.scope.as_ref().is_some_and(|sc| sc.user_id == user_id) => Ok(session),
            Some(_) => Err(MemoryError::NotFound(format!("session {id} of user {user_id}"))),
            None => {
                let now = now_ms();
                Ok(Session {
                    id,
                    scope: Some(Scope {
                        tenant: tenant.to_owned(),
                        user_id: user_id.to_owned(),
                        agent_id: agent_id.to_owned(),
                        session_id: String::new(),
                    }),
                    created_at_ms: now,
                    updated_at_ms: now,
                    ..Default::default()
                })
            }
        }
    }

    /// Appends `messages` to session `session_id` of `user_id` (creating it), storing each
    /// as an episodic memory. All memories are written in one atomic commit; returns their
    /// ids in message order.
    pub async fn import_messages(
        &self,
        tenant: &str,
        user_id: &str,
        session_id: &str,
        messages: Vec<ImportedMessage>,
    ) -> Result<Vec<Ulid>, MemoryError> {
        if user_id.is_empty() {
            return Err(MemoryError::Invalid("user_id is required".into()));
        }
        if messages.is_empty() || messages.len() > MAX_IMPORT {
            return Err(MemoryError::Invalid(format!("messages must hold 1 to {MAX_IMPORT} messages")));
        }
        for (i, m) in messages.iter().enumerate() {
            if !["user", "assistant", "system"].contains(&m.role.as_str()) {
                return Err(MemoryError::Invalid(format!("messages[{i}].role must be user, assistant or system")));
            }
            if m.content.trim().is_empty() {
                return Err(MemoryError::Invalid(format!("messages[{i}].content is empty")));
            }
            if !(m.metadata.is_null() || m.metadata.is_object()) {
                return Err(MemoryError::Invalid(format!("messages[{i}].metadata must be a JSON object")));
            }
        }
        let mut session = self.open_session(tenant, user_id, "", Some(session_id.to_owned())).await?;
        let texts: Vec<String> = messages
            .iter()
            .map(|m| format!("{}: {}", m.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&m.role), m.content))
            .collect();
        let vectors = self.embed_many(texts.clone()).await?;
        let first_turn = session.turns.len() as u32;
        let now = now_ms();
        let entries: Vec<NewEntry> = messages
            .iter()
            .zip(texts)
            .zip(vectors)
            .enumerate()
            .map(|(i, ((m, text), embedding))| NewEntry {
                kind: Some(Kind::Episodic),
                text,
                embedding,
                scope: Scope {
                    tenant: tenant.to_owned(),
                    user_id: user_id.to_owned(),
                    agent_id: String::new(),
                    session_id: session_id.to_owned(),
                },
                metadata: m.metadata.clone(),
                created_at_ms: Some(m.created_at_ms.unwrap_or(now)),
                source: Some(Source::Session(SessionSource {
                    session_id: session_id.to_owned(),
                    turn_index: first_turn + i as u32,
                })),
                ..Default::default()
            })
            .collect();
        session.turns.extend(messages.iter().map(|m| Turn {
            role: m.role.clone(),
            content: m.content.clone(),
            name: m.name.clone().unwrap_or_default(),
            created_at_ms: m.created_at_ms.unwrap_or(now),
            metadata_json: if m.metadata.is_null() { String::new() } else { m.metadata.to_string() },
        }));
        session.updated_at_ms = now;
        let store = self.store().clone();
        let (ids, written) = blocking(move || -> Result<(Vec<Ulid>, Vec<MemoryEntry>), StoreError> {
            let ids: Vec<Ulid> = store.put_entries(entries)?.into_iter().map(|o| o.id).collect();
            store.put_session(&session)?;
            let written = ids.iter().filter_map(|id| store.get_entry(*id).ok().flatten()).collect();
            Ok((ids, written))
        })
        .await?;
        self.note_written(&written);
        Ok(ids)
    }
}
