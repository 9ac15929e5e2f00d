//! What the lexical index holds for a memory: its own text, and for one turn of a
//! conversation, the turn before it as well.
//!
//! A reply often names its subject only in the message it answers ("Did you buy the
//! bike?" — "Yes, a second-hand Ribble"), so a question about the bike finds the reply
//! only when the two are indexed together. The turn is still stored and returned as it
//! is; only its lexical terms gain the context. (Dense retrieval keeps each turn's own
//! vector: embedding the pair instead measured worse, the context diluting the turn.)

use std::collections::HashMap;

use crate::store::records::{memory_entry::Source, MemoryEntry, Session};
use crate::store::{MemoryStore, StoreError};

/// Looks sessions up once per batch: a batch of imported turns all name the same one.
pub struct TurnContext<'a> {
    store: &'a dyn MemoryStore,
    sessions: HashMap<(String, String), Option<Session>>,
}

impl<'a> TurnContext<'a> {
    pub fn new(store: &'a dyn MemoryStore) -> Self {
        Self { store, sessions: HashMap::new() }
    }

    /// The text to index for `entry`: its text, preceded by the session turn before it
    /// when it was written from a session that still holds that turn.
    pub fn lexical_text(&mut self, entry: &MemoryEntry) -> Result<String, StoreError> {
        let Some(Source::Session(source)) = &entry.source else { return Ok(entry.text.clone()) };
        let Some(previous) = source.turn_index.checked_sub(1) else { return Ok(entry.text.clone()) };
        let tenant = entry.scope.as_ref().map(|s| s.tenant.clone()).unwrap_or_default();
        let key = (tenant, source.session_id.clone());
        let session = match self.sessions.get(&key) {
            Some(s) => s,
            None => {
                let loaded = self.store.get_session(&key.0, &key.1)?;
                self.sessions.entry(key).or_insert(loaded)
            }
        };
        Ok(match session.as_ref().and_then(|s| s.turns.get(previous as usize)) {
            Some(turn) => format!("{}\n{}", turn_line(&turn.name, &turn.role, &turn.content), entry.text),
            None => entry.text.clone(),
        })
    }
}

/// A turn as imported turns are stored: "name: content", the role standing in for a
/// missing name.
fn turn_line(name: &str, role: &str, content: &str) -> String {
    format!("{}: {}", if name.is_empty() { role } else { name }, content)
}
