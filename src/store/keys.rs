//! Key layouts of the sled trees. Every key sorts as bytes: integers are big-endian, and
//! strings are length-prefixed so that a prefix of components can never be confused with
//! a longer component (`"ab" + "c"` vs `"a" + "bc"`).

use ulid::Ulid;

use super::records::Scope;

/// Longest string accepted as a key component (tenant, user, session…).
pub const MAX_KEY_COMPONENT: usize = 512;

/// Builds a composite key component by component.
#[derive(Default)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new() -> Self {
        Self(Vec::with_capacity(64))
    }
    pub fn str(mut self, s: &str) -> Self {
        // Writes refuse components over MAX_KEY_COMPONENT, so a longer one (a lookup with
        // a request's over-long id) can match no stored key, whatever its prefix says.
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn byte(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn ulid(mut self, id: Ulid) -> Self {
        self.0.extend_from_slice(&id.to_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// `by_scope`: tenant, user, kind, id. Listing a user's memories of one kind is one prefix scan.
pub fn scope_prefix(tenant: &str, user_id: &str) -> KeyBuf {
    KeyBuf::new().str(tenant).str(user_id)
}

pub fn scope_key(scope: &Scope, kind: i32, id: Ulid) -> Vec<u8> {
    scope_prefix(&scope.tenant, &scope.user_id).byte(kind as u8).ulid(id).finish()
}

/// `by_hash`: the full scope, kind and content hash. One text per scope and kind.
pub fn hash_key(scope: &Scope, kind: i32, hash: &[u8]) -> Vec<u8> {
    KeyBuf::new()
        .str(&scope.tenant)
        .str(&scope.user_id)
        .str(&scope.agent_id)
        .str(&scope.session_id)
        .byte(kind as u8)
        .bytes(hash)
        .finish()
}

/// `by_document`: document id then entry id, so a document's chunks are one range.
pub fn document_key(document: Ulid, entry: Ulid) -> Vec<u8> {
    KeyBuf::new().ulid(document).ulid(entry).finish()
}

/// `by_session` and `sessions`: tenant then session id (session ids are caller-chosen
/// strings, so two tenants may use the same one).
pub fn session_prefix(tenant: &str, session_id: &str) -> KeyBuf {
    KeyBuf::new().str(tenant).str(session_id)
}

/// The tenant and user of a key made by [`scope_prefix`] (nothing may follow them).
pub fn decode_scope_prefix(key: &[u8]) -> Option<(String, String)> {
    let (tenant, user, rest) = decode_scope_prefix_of(key)?;
    rest.is_empty().then_some((tenant, user))
}

fn read_str(key: &[u8]) -> Option<(String, &[u8])> {
    let len = u16::from_be_bytes(key.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(key.get(2..2 + len)?).ok()?;
    Some((s.to_owned(), &key[2 + len..]))
}

/// The tenant, user and what follows them in a key that starts with [`scope_prefix`].
pub fn decode_scope_prefix_of(key: &[u8]) -> Option<(String, String, &[u8])> {
    let (tenant, rest) = read_str(key)?;
    let (user, rest) = read_str(rest)?;
    Some((tenant, user, rest))
}

/// `erasures`: tenant, user.
pub fn erasure_key(tenant: &str, user_id: &str) -> Vec<u8> {
    scope_prefix(tenant, user_id).finish()
}

/// `transcripts`: tenant, user, digest of a session's turns.
pub fn transcript_key(tenant: &str, user_id: &str, digest: &[u8]) -> Vec<u8> {
    scope_prefix(tenant, user_id).bytes(digest).finish()
}

/// The last 16 bytes of an index key are the entry id.
pub fn trailing_ulid(key: &[u8]) -> Option<Ulid> {
    let tail: [u8; 16] = key.get(key.len().checked_sub(16)?..)?.try_into().ok()?;
    Some(Ulid::from_bytes(tail))
}

pub fn point_key(point: u64) -> [u8; 8] {
    point.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_keeps_components_apart() {
        let a = KeyBuf::new().str("ab").str("c").finish();
        let b = KeyBuf::new().str("a").str("bc").finish();
        assert_ne!(a, b);
        assert!(!b.starts_with(&KeyBuf::new().str("ab").finish()));
    }

    #[test]
    fn scope_prefixes_decode() {
        let key = erasure_key("acme", "al\u{e9}");
        assert_eq!(decode_scope_prefix(&key), Some(("acme".into(), "al\u{e9}".into())));
        assert_eq!(decode_scope_prefix(&key[..key.len() - 1]), None);
        let mut longer = key.clone();
        longer.push(0);
        assert_eq!(decode_scope_prefix(&longer), None);
    }

    #[test]
    fn an_over_long_component_makes_a_key_without_panicking() {
        let huge = "x".repeat(70_000);
        let key = KeyBuf::new().str(&huge).finish();
        assert_eq!(&key[..2], &[0xff, 0xff]);
    }

    #[test]
    fn point_keys_sort_numerically() {
        assert!(point_key(255) < point_key(256));
        assert!(point_key(1) < point_key(1 << 40));
    }

    #[test]
    fn trailing_ulid_round_trips() {
        let id = Ulid::new();
        let key = KeyBuf::new().str("t").byte(3).ulid(id).finish();
        assert_eq!(trailing_ulid(&key), Some(id));
        assert_eq!(trailing_ulid(&[1, 2]), None);
    }
}
