//! The JSON-lines format of `engram store export` and `engram store import`: one record
//! per line, tagged by `type` (`entry`, `document`, `session`). It is the bulk loader and
//! the escape hatch across on-disk format changes, so it names every field in words and
//! carries everything needed to restore a store, embeddings included.

use std::io::Write;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::error::{Result, StoreError};
use super::records::{memory_entry::Source, DocumentSource, Kind, MemoryEntry, MemoryVersion, Scope, SessionSource};
use super::records::{Document, DocumentStatus, Session, Turn};
use super::write::NewEntry;
use super::{MemoryStore, Store};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportRecord {
    Entry(EntryJson),
    Document(DocumentJson),
    Session(SessionJson),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScopeJson {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceJson {
    Document { document_id: Ulid, chunk_index: u32, char_start: u64, char_end: u64 },
    Session { session_id: String, turn_index: u32 },
}

/// An entry as exported. Without `id` an import stores it as a new memory
/// (deduplicated by text); with one, it restores or replaces that entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EntryJson {
    #[serde(default)]
    pub id: Option<Ulid>,
    pub kind: String,
    pub text: String,
    pub embedding: Vec<f32>,
    pub scope: ScopeJson,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub created_at_ms: Option<i64>,
    #[serde(default)]
    pub updated_at_ms: Option<i64>,
    #[serde(default)]
    pub last_accessed_at_ms: i64,
    #[serde(default)]
    pub access_count: u64,
    #[serde(default)]
    pub importance: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Ulid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Ulid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Earlier versions, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionJson>,
}

/// An earlier version of an entry (see `MemoryVersion` in the proto).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionJson {
    pub text: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    pub importance: f32,
    pub since_ms: i64,
    pub replaced_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

impl From<&MemoryVersion> for VersionJson {
    fn from(v: &MemoryVersion) -> Self {
        Self {
            text: v.text.clone(),
            metadata: json_or_null(&v.metadata_json),
            importance: v.importance,
            since_ms: v.since_ms,
            replaced_at_ms: v.replaced_at_ms,
            changed: v.changed.clone(),
            expires_at_ms: v.expires_at_ms,
        }
    }
}

impl From<VersionJson> for MemoryVersion {
    fn from(v: VersionJson) -> Self {
        Self {
            text: v.text,
            metadata_json: json_string(&v.metadata),
            importance: v.importance,
            since_ms: v.since_ms,
            replaced_at_ms: v.replaced_at_ms,
            changed: v.changed,
            expires_at_ms: v.expires_at_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DocumentJson {
    pub id: Ulid,
    pub title: String,
    #[serde(default)]
    pub source_name: String,
    #[serde(default)]
    pub mime: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    pub scope: ScopeJson,
    pub content_hash: String,
    pub chunk_ids: Vec<Ulid>,
    pub status: String,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnJson {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionJson {
    pub id: String,
    pub scope: ScopeJson,
    pub turns: Vec<TurnJson>,
    #[serde(default)]
    pub rolling_summary: String,
    #[serde(default)]
    pub summarized_turns: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Hex; finds the session from a re-sent conversation (see `Session`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transcript_digest: String,
}

fn json_or_null(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

fn json_string(v: &serde_json::Value) -> String {
    if v.is_null() {
        String::new()
    } else {
        v.to_string()
    }
}

fn hex(b: &[u8]) -> String {
    super::read::hex(b)
}

impl From<&Scope> for ScopeJson {
    fn from(s: &Scope) -> Self {
        Self {
            tenant: s.tenant.clone(),
            user_id: s.user_id.clone(),
            agent_id: s.agent_id.clone(),
            session_id: s.session_id.clone(),
        }
    }
}

impl From<ScopeJson> for Scope {
    fn from(s: ScopeJson) -> Self {
        Self { tenant: s.tenant, user_id: s.user_id, agent_id: s.agent_id, session_id: s.session_id }
    }
}

fn ulid_of(bytes: &[u8]) -> Ulid {
    super::records::ulid_from_bytes(bytes).unwrap_or_default()
}

impl From<&MemoryEntry> for EntryJson {
    fn from(e: &MemoryEntry) -> Self {
        Self {
            id: e.ulid(),
            kind: e.kind().name().into(),
            text: e.text.clone(),
            embedding: e.embedding.clone(),
            scope: e.scope.as_ref().map(Into::into).unwrap_or_default(),
            metadata: json_or_null(&e.metadata_json),
            created_at_ms: Some(e.created_at_ms),
            updated_at_ms: Some(e.updated_at_ms),
            last_accessed_at_ms: e.last_accessed_at_ms,
            access_count: e.access_count,
            importance: Some(e.importance),
            valid_from_ms: e.valid_from_ms,
            valid_to_ms: e.valid_to_ms,
            source: e.source.as_ref().map(|s| match s {
                Source::Document(d) => SourceJson::Document {
                    document_id: ulid_of(&d.document_id),
                    chunk_index: d.chunk_index,
                    char_start: d.char_start,
                    char_end: d.char_end,
                },
                Source::Session(s) => {
                    SourceJson::Session { session_id: s.session_id.clone(), turn_index: s.turn_index }
                }
            }),
            superseded_by: super::records::ulid_from_bytes(&e.superseded_by),
            supersedes: e.supersedes.iter().filter_map(|b| super::records::ulid_from_bytes(b)).collect(),
            expires_at_ms: e.expires_at_ms,
            versions: e.versions.iter().map(Into::into).collect(),
        }
    }
}

fn source_record(s: SourceJson) -> Source {
    match s {
        SourceJson::Document { document_id, chunk_index, char_start, char_end } => Source::Document(DocumentSource {
            document_id: document_id.to_bytes().to_vec().into(),
            chunk_index,
            char_start,
            char_end,
        }),
        SourceJson::Session { session_id, turn_index } => Source::Session(SessionSource { session_id, turn_index }),
    }
}

impl EntryJson {
    fn kind(&self) -> Result<Kind> {
        self.kind.parse().map_err(StoreError::Invalid)
    }

    /// A complete record, for an import that keeps the id.
    fn into_record(self, id: Ulid) -> Result<MemoryEntry> {
        let now = super::records::now_ms();
        let kind = self.kind()?;
        let mut e = MemoryEntry {
            id: id.to_bytes().to_vec().into(),
            text: self.text,
            embedding: self.embedding,
            scope: Some(self.scope.into()),
            metadata_json: json_string(&self.metadata),
            created_at_ms: self.created_at_ms.unwrap_or(now),
            updated_at_ms: self.updated_at_ms.unwrap_or(now),
            last_accessed_at_ms: self.last_accessed_at_ms,
            access_count: self.access_count,
            importance: self.importance.unwrap_or(0.5),
            valid_from_ms: self.valid_from_ms,
            valid_to_ms: self.valid_to_ms,
            source: self.source.map(source_record),
            superseded_by: self.superseded_by.map(|u| u.to_bytes().to_vec().into()).unwrap_or_default(),
            supersedes: self.supersedes.iter().map(|u| u.to_bytes().to_vec().into()).collect(),
            expires_at_ms: self.expires_at_ms,
            versions: self.versions.into_iter().map(Into::into).collect(),
            ..Default::default()
        };
        e.set_kind(kind);
        Ok(e)
    }

    fn into_new(self) -> Result<NewEntry> {
        Ok(NewEntry {
            kind: Some(self.kind()?),
            text: self.text,
            embedding: self.embedding,
            scope: self.scope.into(),
            metadata: self.metadata,
            created_at_ms: self.created_at_ms,
            importance: self.importance,
            valid_from_ms: self.valid_from_ms,
            valid_to_ms: self.valid_to_ms,
            source: self.source.map(source_record),
            expires_at_ms: self.expires_at_ms,
        })
    }
}

fn status_name(s: DocumentStatus) -> &'static str {
    match s {
        DocumentStatus::Unspecified => "unspecified",
        DocumentStatus::Pending => "pending",
        DocumentStatus::Ready => "ready",
        DocumentStatus::Failed => "failed",
    }
}

impl From<&Document> for DocumentJson {
    fn from(d: &Document) -> Self {
        Self {
            id: ulid_of(&d.id),
            title: d.title.clone(),
            source_name: d.source_name.clone(),
            mime: d.mime.clone(),
            metadata: json_or_null(&d.metadata_json),
            scope: d.scope.as_ref().map(Into::into).unwrap_or_default(),
            content_hash: hex(&d.content_hash),
            chunk_ids: d.chunk_ids.iter().map(|c| ulid_of(c)).collect(),
            status: status_name(d.status()).into(),
            created_at_ms: d.created_at_ms,
            error: d.error.clone(),
        }
    }
}

impl DocumentJson {
    fn into_record(self) -> Result<Document> {
        let status =
            [DocumentStatus::Pending, DocumentStatus::Ready, DocumentStatus::Failed, DocumentStatus::Unspecified]
                .into_iter()
                .find(|s| status_name(*s) == self.status)
                .ok_or_else(|| StoreError::Invalid(format!("unknown document status `{}`", self.status)))?;
        let content_hash = (0..self.content_hash.len())
            .step_by(2)
            .map(|i| self.content_hash.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| StoreError::Invalid("document content_hash is not hex".into()))?;
        let mut d = Document {
            id: self.id.to_bytes().to_vec().into(),
            title: self.title,
            source_name: self.source_name,
            mime: self.mime,
            metadata_json: json_string(&self.metadata),
            scope: Some(self.scope.into()),
            content_hash: content_hash.into(),
            chunk_ids: self.chunk_ids.iter().map(|c| c.to_bytes().to_vec().into()).collect(),
            created_at_ms: self.created_at_ms,
            error: self.error,
            status: 0,
        };
        d.set_status(status);
        Ok(d)
    }
}

impl From<&Session> for SessionJson {
    fn from(s: &Session) -> Self {
        Self {
            id: s.id.clone(),
            scope: s.scope.as_ref().map(Into::into).unwrap_or_default(),
            turns: s
                .turns
                .iter()
                .map(|t| TurnJson {
                    role: t.role.clone(),
                    content: t.content.clone(),
                    name: t.name.clone(),
                    created_at_ms: t.created_at_ms,
                    metadata: json_or_null(&t.metadata_json),
                })
                .collect(),
            rolling_summary: s.rolling_summary.clone(),
            summarized_turns: s.summarized_turns,
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
            transcript_digest: hex(&s.transcript_digest),
        }
    }
}

impl From<SessionJson> for Session {
    fn from(s: SessionJson) -> Self {
        Self {
            id: s.id,
            scope: Some(s.scope.into()),
            turns: s
                .turns
                .into_iter()
                .map(|t| Turn {
                    role: t.role,
                    content: t.content,
                    name: t.name,
                    created_at_ms: t.created_at_ms,
                    metadata_json: json_string(&t.metadata),
                })
                .collect(),
            rolling_summary: s.rolling_summary,
            summarized_turns: s.summarized_turns,
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
            // Assigned anew when stored.
            revision: 0,
            transcript_digest: super::read::unhex(&s.transcript_digest).unwrap_or_default().into(),
        }
    }
}

/// One record as one line of the export.
pub fn write_record(out: &mut dyn Write, record: &ExportRecord) -> Result<()> {
    serde_json::to_writer(&mut *out, record).map_err(|e| StoreError::Io(e.into()))?;
    out.write_all(b"\n")?;
    Ok(())
}

impl Store {
    /// Writes every record as one JSON line. Returns how many were written; stops at the
    /// first record that does not decode, naming it.
    pub fn export(&self, out: &mut dyn Write) -> Result<usize> {
        let mut n = 0;
        let mut line = |rec: ExportRecord| -> Result<()> {
            write_record(out, &rec)?;
            n += 1;
            Ok(())
        };
        for item in self.trees.documents.iter() {
            let (k, v) = item?;
            let d: Document = prost::Message::decode(v.as_ref()).map_err(|e| StoreError::Corrupt {
                tree: "documents",
                key: hex(&k),
                reason: e.to_string(),
            })?;
            line(ExportRecord::Document((&d).into()))?;
        }
        for item in self.trees.sessions.iter() {
            let (k, v) = item?;
            let s: Session = prost::Message::decode(v.as_ref()).map_err(|e| StoreError::Corrupt {
                tree: "sessions",
                key: hex(&k),
                reason: e.to_string(),
            })?;
            line(ExportRecord::Session((&s).into()))?;
        }
        for item in self.trees.entries.iter() {
            let (k, v) = item?;
            let e = super::read::decode_entry(&k, &v)?;
            line(ExportRecord::Entry((&e).into()))?;
        }
        out.flush()?;
        Ok(n)
    }
}

/// Imports a batch of JSON lines into either backend, atomically per record type and
/// durably. Returns, in line order, the id each line resolved to (entries and documents
/// by ULID, sessions by their id). A line that does not parse fails the whole batch,
/// naming the line.
pub fn import_lines(store: &dyn MemoryStore, lines: &[(usize, String)]) -> Result<Vec<String>> {
    let mut parsed = Vec::with_capacity(lines.len());
    for (line_no, text) in lines {
        let rec: ExportRecord =
            serde_json::from_str(text).map_err(|e| StoreError::Invalid(format!("line {line_no}: {e}")))?;
        parsed.push((line_no, rec));
    }
    let mut ids = vec![String::new(); parsed.len()];
    let mut keep = Vec::new();
    let mut fresh = Vec::new();
    for (slot, (line_no, rec)) in parsed.into_iter().enumerate() {
        let at = |e: StoreError| match e {
            StoreError::Invalid(m) => StoreError::Invalid(format!("line {line_no}: {m}")),
            other => other,
        };
        match rec {
            ExportRecord::Entry(e) => match e.id {
                Some(id) => keep.push((slot, e.into_record(id).map_err(at)?)),
                None => fresh.push((slot, e.into_new().map_err(at)?)),
            },
            ExportRecord::Document(d) => {
                ids[slot] = d.id.to_string();
                store.put_document(&d.into_record().map_err(at)?)?;
            }
            ExportRecord::Session(s) => {
                ids[slot] = s.id.clone();
                store.put_session(&s.into())?;
            }
        }
    }
    let (slots, records): (Vec<_>, Vec<_>) = keep.into_iter().unzip();
    for (slot, id) in slots.into_iter().zip(store.import_entries(records)?) {
        ids[slot] = id.to_string();
    }
    let (slots, news): (Vec<_>, Vec<_>) = fresh.into_iter().unzip();
    for (slot, out) in slots.into_iter().zip(store.put_entries(news)?) {
        ids[slot] = out.id.to_string();
    }
    Ok(ids)
}
