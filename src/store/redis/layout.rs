//! Where each record lives in the cluster. The layout is versioned
//! ([`LAYOUT_VERSION`], recorded under [`meta_layout`] and in `migrations/`).
//!
//! Every key of a scope (a tenant and a user; user empty for the tenant's shared
//! knowledge) carries the hash tag of that scope's *shard*, `{sNN}`, so that all the keys
//! one request writes share a slot and commit in one script, all or nothing. A shard
//! holds many scopes; its change stream (`{sNN}:changes`) is written in the same script
//! and is what the other nodes tail. A tag per scope would need a stream per scope, and
//! every node would have to tail as many streams as there are users: shards bound that
//! to [`SHARDS`], while the cluster still spreads them over its masters.
//!
//! Records keyed by id alone (entries, documents, jobs) or by tenant and session id
//! (sessions) are found through *directory* keys in the shard of the id. The directory
//! is written before the commit and removed after a delete: it is a hint, and the data
//! keys are the truth (a directory key naming nothing finds nothing).

use ulid::Ulid;

use crate::store::keys::KeyBuf;

/// Shards (hash tags). Part of the layout: changing it moves every key.
pub const SHARDS: u16 = 64;
/// The layout these functions write. Version 1: this file as first released. Version 2:
/// the per-shard expiry index ([`Keys::expiries`]), and entries carrying supersession,
/// versions and expiry (see `migrations/redis-0002-expiry.md`).
pub const LAYOUT_VERSION: u32 = 2;
/// Entries kept per shard stream; a node that falls further behind rebuilds the scopes
/// of that shard instead of replaying.
pub const STREAM_MAX_LEN: usize = 10_000;

/// A tenant and a user (empty for the tenant's shared knowledge): the unit of caching.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub tenant: String,
    pub user: String,
}

impl ScopeKey {
    pub fn new(tenant: &str, user: &str) -> Self {
        Self { tenant: tenant.to_owned(), user: user.to_owned() }
    }

    fn bytes(&self) -> Vec<u8> {
        KeyBuf::new().str(&self.tenant).str(&self.user).finish()
    }

    /// The scope in keys and stream events: hex, so that any tenant or user name
    /// (braces included, which would break hash tags) is safe in a key.
    pub fn hex(&self) -> String {
        hex(&self.bytes())
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = unhex(s)?;
        let (tenant, user) = crate::store::keys::decode_scope_prefix(&bytes)?;
        Some(Self { tenant, user })
    }

    pub fn shard(&self) -> u16 {
        shard_of(&self.bytes())
    }
}

fn shard_of(bytes: &[u8]) -> u16 {
    let h = blake3::hash(bytes);
    u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]]) % SHARDS
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    crate::store::read::unhex(s)
}

/// The keys of one deployment: every key starts with its namespace
/// (`store.redis_namespace`), so that several deployments — or test runs — can share
/// one cluster without meeting.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: std::sync::Arc<str>,
}

/// The shard a directory key of `id` lives in.
pub fn id_shard(id: Ulid) -> u16 {
    shard_of(&id.to_bytes())
}

impl Keys {
    pub fn new(namespace: &str) -> Result<Self, String> {
        if namespace.is_empty() || namespace.contains(['{', '}']) || namespace.len() > 64 {
            return Err(format!("store.redis_namespace must be 1 to 64 bytes without braces, got `{namespace}`"));
        }
        Ok(Self { prefix: namespace.into() })
    }

    fn tag(&self, shard: u16) -> String {
        format!("{}:{{s{shard:02}}}", self.prefix)
    }

    /// A SCAN pattern for every key of one shard (glob characters in the namespace
    /// escaped), and the prefix those keys start with.
    pub fn shard_pattern(&self, shard: u16) -> (String, String) {
        let prefix = format!("{}:", self.tag(shard));
        let mut pattern = String::with_capacity(prefix.len() + 2);
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        (pattern, prefix)
    }

    /// id → the shard holding the record (entries, documents, jobs).
    pub fn directory(&self, id: Ulid) -> String {
        format!("{}:dir:{id}", self.tag(id_shard(id)))
    }

    /// (tenant, session id) → the hex scope of the user owning the session.
    pub fn session_directory(&self, tenant: &str, session_id: &str) -> String {
        let key = KeyBuf::new().str(tenant).str(session_id).finish();
        format!("{}:sdir:{}", self.tag(shard_of(&key)), hex(&key))
    }

    /// The set of a tenant's documents across its users ("<shard>:<id>" members).
    pub fn tenant_documents(&self, tenant: &str) -> String {
        let key = KeyBuf::new().str(tenant).finish();
        format!("{}:tdocs:{}", self.tag(shard_of(&key)), hex(&key))
    }

    pub fn entry(&self, shard: u16, id: Ulid) -> String {
        format!("{}:m:{id}", self.tag(shard))
    }

    /// Sorted set of a scope's entries, members `kind byte ‖ id bytes` (listing order).
    pub fn listing(&self, scope: &ScopeKey) -> String {
        format!("{}:z:{}", self.tag(scope.shard()), scope.hex())
    }

    /// Content hash key (see `keys::hash_key`) → entry id: one copy of a text per scope.
    pub fn dedupe(&self, shard: u16, hash_key: &[u8]) -> String {
        format!("{}:h:{}", self.tag(shard), hex(hash_key))
    }

    /// Set of a document's chunk ids.
    pub fn document_chunks(&self, shard: u16, document: Ulid) -> String {
        format!("{}:dc:{document}", self.tag(shard))
    }

    pub fn document(&self, shard: u16, id: Ulid) -> String {
        format!("{}:d:{id}", self.tag(shard))
    }

    /// Set of a scope's document ids.
    pub fn scope_documents(&self, scope: &ScopeKey) -> String {
        format!("{}:ds:{}", self.tag(scope.shard()), scope.hex())
    }

    pub fn job(&self, shard: u16, id: Ulid) -> String {
        format!("{}:j:{id}", self.tag(shard))
    }

    /// Set of a scope's job ids.
    pub fn scope_jobs(&self, scope: &ScopeKey) -> String {
        format!("{}:js:{}", self.tag(scope.shard()), scope.hex())
    }

    pub fn session(&self, scope: &ScopeKey, session_id: &str) -> String {
        format!("{}:s:{}:{}", self.tag(scope.shard()), scope.hex(), hex(session_id.as_bytes()))
    }

    /// Set of the entry ids written from a session.
    pub fn session_entries(&self, scope: &ScopeKey, session_id: &str) -> String {
        format!("{}:se:{}:{}", self.tag(scope.shard()), scope.hex(), hex(session_id.as_bytes()))
    }

    /// Set of a scope's session ids.
    pub fn scope_sessions(&self, scope: &ScopeKey) -> String {
        format!("{}:ss:{}", self.tag(scope.shard()), scope.hex())
    }

    /// Hash of a scope's transcript digests (hex) → session id.
    pub fn transcripts(&self, scope: &ScopeKey) -> String {
        format!("{}:tr:{}", self.tag(scope.shard()), scope.hex())
    }

    /// The scope's erase epoch (u64, big-endian bytes; absent is 0).
    pub fn epoch(&self, scope: &ScopeKey) -> String {
        format!("{}:ep:{}", self.tag(scope.shard()), scope.hex())
    }

    /// The shard's change stream.
    /// Sorted set of the shard's expiring entries: member = entry id, score = expiry (ms).
    pub fn expiries(&self, shard: u16) -> String {
        format!("{}:exp", self.tag(shard))
    }

    pub fn changes(&self, shard: u16) -> String {
        format!("{}:changes", self.tag(shard))
    }

    pub fn meta_layout(&self) -> String {
        format!("{}:{{meta}}:layout", self.prefix)
    }

    pub fn meta_dimension(&self) -> String {
        format!("{}:{{meta}}:dimension", self.prefix)
    }

    /// A counter: session revisions, unique across the cluster and never reused.
    pub fn meta_revision(&self) -> String {
        format!("{}:{{meta}}:revision", self.prefix)
    }

    /// Set of the hex scopes whose erase has begun and not ended.
    pub fn meta_erasing(&self) -> String {
        format!("{}:{{meta}}:erasing", self.prefix)
    }

    /// Set of every job id ("<shard>:<id>"), for resuming jobs at start.
    pub fn meta_jobs(&self) -> String {
        format!("{}:{{meta}}:jobs", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("tag");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_a_scope_shares_its_tag() {
        let scope = ScopeKey::new("acme {evil}", "al}ice{");
        let shard = scope.shard();
        let k = Keys::new("engram").unwrap();
        let id = Ulid::new();
        let keys = [
            k.entry(shard, id),
            k.listing(&scope),
            k.dedupe(shard, b"k"),
            k.document(shard, id),
            k.document_chunks(shard, id),
            k.scope_documents(&scope),
            k.job(shard, id),
            k.scope_jobs(&scope),
            k.session(&scope, "s{1}"),
            k.session_entries(&scope, "s{1}"),
            k.scope_sessions(&scope),
            k.transcripts(&scope),
            k.epoch(&scope),
            k.changes(shard),
        ];
        for key in &keys {
            assert_eq!(hash_tag(key), format!("s{shard:02}"), "{key}");
        }
    }

    #[test]
    fn scopes_round_trip_through_hex_and_spread_over_shards() {
        let scope = ScopeKey::new("t", "");
        assert_eq!(ScopeKey::from_hex(&scope.hex()), Some(scope));
        let shards: std::collections::HashSet<u16> =
            (0..1000).map(|i| ScopeKey::new("t", &format!("user-{i}")).shard()).collect();
        assert!(shards.len() > SHARDS as usize * 9 / 10, "{} shards used", shards.len());
    }
}
