//! `engram store verify`: every record decodes, every secondary index agrees with the
//! entries, and the vector index holds exactly the live entries.

use std::collections::HashSet;

use prost::Message;
use serde::Serialize;
use ulid::Ulid;

use super::error::Result;
use super::read::{decode_entry, hex};
use super::records::{ulid_from_bytes, Document, Session};
use super::{keys, Store};

/// What `verify` found. `problems` is empty for a healthy store.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub entries: usize,
    pub documents: usize,
    pub sessions: usize,
    pub index_points: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    pub fn verify(&self) -> Result<VerifyReport> {
        let t = &self.trees;
        let mut problems = Vec::new();
        let mut ids = HashSet::new();
        let mut points = HashSet::new();
        let dim = *self.dimension.lock();
        for item in t.entries.iter() {
            let (key, value) = item?;
            let e = match decode_entry(&key, &value) {
                Ok(e) => e,
                Err(err) => {
                    problems.push(err.to_string());
                    continue;
                }
            };
            let id = e.ulid().expect("decode_entry checked the id against the key");
            let at = format!("entry {id}");
            ids.insert(id);
            points.insert(e.point_id);
            let scope = e.scope.clone().unwrap_or_default();
            if t.points.get(keys::point_key(e.point_id))?.as_deref() != Some(&id.to_bytes()[..]) {
                problems.push(format!("{at}: point {} does not map back to it", e.point_id));
            }
            if !t.by_scope.contains_key(keys::scope_key(&scope, e.kind, id))? {
                problems.push(format!("{at}: missing from by_scope"));
            }
            if t.by_hash.get(keys::hash_key(&scope, e.kind, &e.content_hash))?.is_none() {
                problems.push(format!("{at}: its content hash is missing from by_hash"));
            }
            if blake3::hash(e.text.as_bytes()).as_bytes() != e.content_hash.as_ref() {
                problems.push(format!("{at}: content hash does not match its text"));
            }
            if dim.is_some_and(|d| d != e.embedding.len()) {
                problems.push(format!("{at}: embedding has {} dimensions, the store {dim:?}", e.embedding.len()));
            }
            let norm = e.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            if (norm - 1.0).abs() > 1e-3 {
                problems.push(format!("{at}: embedding is not unit length ({norm})"));
            }
            if !self.index.contains(e.point_id) {
                problems.push(format!("{at}: not in the vector index"));
            }
        }
        let dangling = |tree: &'static str, key: &[u8], id: Option<Ulid>, problems: &mut Vec<String>| {
            if !id.is_some_and(|id| ids.contains(&id)) {
                problems.push(format!("{tree} key {} points at no entry", hex(key)));
            }
        };
        for (tree, name) in [(&t.by_scope, "by_scope"), (&t.by_document, "by_document"), (&t.by_session, "by_session")]
        {
            for key in tree.iter().keys() {
                let key = key?;
                dangling(name, &key, keys::trailing_ulid(&key), &mut problems);
            }
        }
        for item in t.by_hash.iter().chain(t.points.iter()) {
            let (key, value) = item?;
            let tree = if key.len() == 8 { "points" } else { "by_hash" };
            dangling(tree, &key, ulid_from_bytes(&value), &mut problems);
        }
        let index_points = self.index.len();
        if index_points != ids.len() {
            problems.push(format!("the vector index holds {index_points} live points, sled {} entries", ids.len()));
        }
        let missing = self.index.missing_from_graph();
        if missing > 0 {
            problems.push(format!("{missing} live points are not in the HNSW graph"));
        }
        let mut documents = 0;
        for item in t.documents.iter() {
            let (k, v) = item?;
            documents += 1;
            if let Err(e) = Document::decode(v.as_ref()) {
                problems.push(format!("corrupt record in tree `documents` at key {}: {e}", hex(&k)));
            }
        }
        let mut sessions = 0;
        for item in t.sessions.iter() {
            let (k, v) = item?;
            sessions += 1;
            if let Err(e) = Session::decode(v.as_ref()) {
                problems.push(format!("corrupt record in tree `sessions` at key {}: {e}", hex(&k)));
            }
        }
        // Each transcript key names a session of that tenant and user holding that digest.
        for item in t.transcripts.iter() {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&v);
            let owner = keys::decode_scope_prefix_of(&k);
            let agrees = owner.as_ref().is_some_and(|(tenant, user, digest)| {
                self.get_session(tenant, &id).ok().flatten().is_some_and(|s| {
                    s.scope.as_ref().is_some_and(|sc| &sc.user_id == user) && s.transcript_digest.as_ref() == *digest
                })
            });
            if !agrees {
                problems.push(format!("transcripts key {} names session `{id}`, which does not hold it", hex(&k)));
            }
        }
        // An erase is either done or finished at open; one still half-way means it failed.
        for item in t.erasures.iter() {
            let (k, v) = item?;
            if <[u8; 8]>::try_from(v.as_ref()).map_or(true, |b| u64::from_be_bytes(b) % 2 == 1) {
                problems.push(format!("erasure {} did not finish", hex(&k)));
            }
        }
        Ok(VerifyReport { entries: ids.len(), documents, sessions, index_points, problems })
    }
}
