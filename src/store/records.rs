//! The stored records, generated from `proto/engram/store/v1/records.proto`, and small
//! helpers around them.

#![allow(clippy::all)]
include!(concat!(env!("OUT_DIR"), "/engram.store.v1.rs"));

use std::fmt;
use std::str::FromStr;

use prost::Message;
use ulid::Ulid;

impl Kind {
    /// The name used in the API, the CLI and the export format.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Knowledge => "knowledge",
            Kind::Episodic => "episodic",
            Kind::Fact => "fact",
            Kind::Summary => "summary",
        }
    }

    /// The four kinds a memory can have.
    pub const ALL: [Kind; 4] = [Kind::Knowledge, Kind::Episodic, Kind::Fact, Kind::Summary];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown kind `{s}` (expected knowledge, episodic, fact or summary)"))
    }
}

/// A ULID stored as 16 bytes (record ids, document ids, chunk ids, index values);
/// `None` for any other length.
pub fn ulid_from_bytes(bytes: &[u8]) -> Option<Ulid> {
    Some(Ulid::from_bytes(bytes.try_into().ok()?))
}

impl MemoryEntry {
    /// The entry's id; `None` only for a record that fails verification.
    pub fn ulid(&self) -> Option<Ulid> {
        ulid_from_bytes(&self.id)
    }

    /// Since when the entry holds: its validity start, else its creation.
    pub fn valid_since_ms(&self) -> i64 {
        self.valid_from_ms.unwrap_or(self.created_at_ms)
    }

    /// Not superseded by a newer entry.
    pub fn is_current(&self) -> bool {
        self.superseded_by.is_empty()
    }

    /// The record as an editor sees it: everything but what retrieval bumps on its own
    /// (access statistics) and what the store assigns (the index point). Two reads with
    /// equal stamps saw the same memory, so an edit based on one may replace the other.
    pub fn edit_stamp(&self) -> Vec<u8> {
        let mut e = self.clone();
        e.access_count = 0;
        e.last_accessed_at_ms = 0;
        e.point_id = 0;
        e.encode_to_vec()
    }
}

impl Scope {
    /// A scope with only a tenant and a user, the common case.
    pub fn user(tenant: impl Into<String>, user_id: impl Into<String>) -> Self {
        Scope { tenant: tenant.into(), user_id: user_id.into(), ..Default::default() }
    }
}

/// Milliseconds since the Unix epoch, the unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
