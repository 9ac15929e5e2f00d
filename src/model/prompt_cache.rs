//! Attention caches kept between generations, so that a chat turn recomputes only what is
//! new since the session's previous turn (Transformer-XL's reuse of past states, applied
//! across requests).
//!
//! A turn's prompt is mostly the previous turn's prompt plus the new exchange (the prompt
//! layout in `memory::context` keeps it so). The generation thread parks each session's
//! [`KvCache`] here with the tokens it holds; the next turn of the session takes it back,
//! keeps the longest common prefix of those tokens and the new prompt, and prefills only
//! the rest. A session with nothing parked starts from a copy of the longest prefix any
//! parked cache of the same scope shares with it (at least the system prompt, typically).
//!
//! Bounds and rules:
//! - the parked caches' bytes stay within a budget; the least recently used go first, and
//!   a budget of 0 turns reuse off;
//! - sharing never crosses a scope (the tenant): a prefix reused from another scope would
//!   tell, through `cached_tokens` or timing, that someone else's prompt begins that way;
//! - [`PromptCache::forget_session`] and [`PromptCache::forget_scope`] drop what they name
//!   at once, and a cache checked out at that moment is dropped when it comes back
//!   instead of being parked again — an erased user's prompts do not live on here.

use std::collections::HashMap;

use super::llama::KvCache;

/// Whose cache: the scope (tenant) that sharing stays within, and the session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub scope: String,
    pub session: String,
}

struct Parked {
    /// The tokens whose keys and values `kv` holds, in order (`tokens.len() == kv.len()`).
    tokens: Vec<u32>,
    kv: KvCache,
    last_used: u64,
}

/// A cache checked out for one generation; give it back with [`PromptCache::check_in`].
pub struct Lease {
    key: Option<CacheKey>,
    /// Holds the first `reused` tokens of the prompt already.
    pub kv: KvCache,
    /// Prompt tokens that need no computing.
    pub reused: usize,
    /// [`PromptCache::forgets`] when the lease was taken.
    forgets_seen: u64,
}

/// A forget made while a lease may be out: `session` `None` means the whole scope.
struct Forget {
    seq: u64,
    scope: String,
    session: Option<String>,
}

/// The parked caches. See the module documentation.
pub struct PromptCache {
    budget_bytes: usize,
    parked: HashMap<CacheKey, Parked>,
    clock: u64,
    forgets: u64,
    recent_forgets: Vec<Forget>,
}

/// Counts for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub sessions: usize,
    pub bytes: usize,
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PromptCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget_bytes, parked: HashMap::new(), clock: 0, forgets: 0, recent_forgets: Vec::new() }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { sessions: self.parked.len(), bytes: self.parked.values().map(|p| p.kv.bytes()).sum() }
    }

    /// A cache for `prompt`: the session's own, or a copy of the longest prefix shared
    /// with another cache of its scope, or `fresh()`; cut back to what `prompt` shares
    /// with it, rounded down to a multiple of `granularity` (the model's, see
    /// `Llama::reuse_granularity`), and always leaving at least the last prompt token to
    /// compute (its logits start the generation). Without a key, or with reuse off,
    /// always `fresh()`.
    pub fn check_out(
        &mut self,
        key: Option<&CacheKey>,
        prompt: &[u32],
        granularity: usize,
        fresh: impl FnOnce() -> KvCache,
    ) -> Result<Lease, tch::TchError> {
        // One generation at a time: nothing checked out is older than this, so forgets
        // before now are settled.
        self.recent_forgets.clear();
        let forgets_seen = self.forgets;
        let granularity = granularity.max(1);
        let usable = prompt.len().saturating_sub(1);
        let reusable = |tokens: &[u32]| common_prefix(tokens, prompt).min(usable) / granularity * granularity;
        let lease = |kv: KvCache, reused: usize| Lease { key: key.cloned(), kv, reused, forgets_seen };
        let Some(key) = key.filter(|_| self.budget_bytes > 0) else { return Ok(lease(fresh(), 0)) };
        if let Some(own) = self.parked.remove(key) {
            let mut kv = own.kv;
            let reused = reusable(&own.tokens);
            kv.truncate(reused);
            return Ok(lease(kv, reused));
        }
        let donor = self
            .parked
            .iter()
            .filter(|(k, _)| k.scope == key.scope)
            .map(|(_, p)| (reusable(&p.tokens), p))
            .max_by_key(|(shared, _)| *shared);
        match donor {
            Some((shared, p)) if shared > 0 => Ok(lease(p.kv.fork(shared)?, shared)),
            _ => Ok(lease(fresh(), 0)),
        }
    }

    /// Parks a lease's cache again, to be reused for `tokens`: the tokens of its first
    /// positions (later positions are let go; `tokens` is cut to the cache's length).
    /// Dropped instead when its session was forgotten meanwhile or it has no key; then the
    /// least recently used caches are dropped until the budget holds.
    pub fn check_in(&mut self, mut lease: Lease, mut tokens: Vec<u32>) {
        let Some(key) = lease.key else { return };
        let forgotten = self.recent_forgets.iter().any(|f| {
            f.seq > lease.forgets_seen && f.scope == key.scope && f.session.as_ref().is_none_or(|s| *s == key.session)
        });
        if forgotten || self.budget_bytes == 0 {
            return;
        }
        tokens.truncate(lease.kv.len());
        lease.kv.truncate(tokens.len());
        self.clock += 1;
        self.parked.insert(key, Parked { tokens, kv: lease.kv, last_used: self.clock });
        let mut total: usize = self.parked.values().map(|p| p.kv.bytes()).sum();
        while total > self.budget_bytes {
            let Some(oldest) = self.parked.iter().min_by_key(|(_, p)| p.last_used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(p) = self.parked.remove(&oldest) {
                total -= p.kv.bytes();
            }
        }
    }

    /// Drops the session's cache, now and when a lease of it comes back.
    pub fn forget_session(&mut self, scope: &str, session: &str) {
        self.parked.retain(|k, _| !(k.scope == scope && k.session == session));
        self.record_forget(scope, Some(session));
    }

    /// Drops every cache of the scope.
    pub fn forget_scope(&mut self, scope: &str) {
        self.parked.retain(|k, _| k.scope != scope);
        self.record_forget(scope, None);
    }

    fn record_forget(&mut self, scope: &str, session: Option<&str>) {
        self.forgets += 1;
        self.recent_forgets.push(Forget {
            seq: self.forgets,
            scope: scope.to_owned(),
            session: session.map(str::to_owned),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::llama::{Llama, LlamaConfig};
    use tch::{Device, Kind};

    fn model() -> Llama {
        let config = LlamaConfig {
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 16,
            rope_theta: 10000.0,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            attention_bias: false,
        };
        Llama::random(config, 11, Device::Cpu, Kind::Float)
    }

    fn key(scope: &str, session: &str) -> CacheKey {
        CacheKey { scope: scope.into(), session: session.into() }
    }

    /// Checks out, runs the uncomputed part of `prompt`, checks in; returns what was reused.
    fn turn(cache: &mut PromptCache, m: &Llama, k: Option<&CacheKey>, prompt: &[u32]) -> usize {
        let mut lease = cache.check_out(k, prompt, 1, || m.new_cache()).unwrap();
        let reused = lease.reused;
        m.forward(&prompt[reused..], &mut lease.kv).unwrap();
        cache.check_in(lease, prompt.to_vec());
        reused
    }

    #[test]
    fn a_session_reuses_its_prefix_and_never_the_last_token() {
        let m = model();
        let mut cache = PromptCache::new(1 << 30);
        let a = key("t", "a");
        assert_eq!(turn(&mut cache, &m, Some(&a), &[1, 2, 3, 4]), 0);
        assert_eq!(turn(&mut cache, &m, Some(&a), &[1, 2, 3, 4, 5, 6]), 4);
        // A prompt that diverges keeps only the common part.
        assert_eq!(turn(&mut cache, &m, Some(&a), &[1, 2, 9, 9]), 2);
        // The same prompt again: everything but its last token.
        assert_eq!(turn(&mut cache, &m, Some(&a), &[1, 2, 9, 9]), 3);
        // No key: nothing reused, nothing parked.
        assert_eq!(turn(&mut cache, &m, None, &[1, 2, 9, 9, 7]), 0);
        assert_eq!(cache.stats().sessions, 1);
    }

    #[test]
    fn reuse_is_cut_to_the_granularity() {
        let m = model();
        let mut cache = PromptCache::new(1 << 30);
        let a = key("t", "a");
        let prompt: Vec<u32> = (1..=20).collect();
        let lease = cache.check_out(Some(&a), &prompt, 8, || m.new_cache()).unwrap();
        cache.check_in(lease, Vec::new());
        let mut lease = cache.check_out(Some(&a), &prompt, 8, || m.new_cache()).unwrap();
        m.forward(&prompt, &mut lease.kv).unwrap();
        cache.check_in(lease, prompt.clone());
        // 19 usable positions, cut to 16.
        let lease = cache.check_out(Some(&a), &prompt, 8, || m.new_cache()).unwrap();
        assert_eq!(lease.reused, 16);
        assert_eq!(lease.kv.len(), 16);
    }

    #[test]
    fn sessions_share_prefixes_within_their_scope_only() {
        let m = model();
        let mut cache = PromptCache::new(1 << 30);
        turn(&mut cache, &m, Some(&key("t", "a")), &[1, 2, 3, 4, 5]);
        assert_eq!(turn(&mut cache, &m, Some(&key("t", "b")), &[1, 2, 3, 7]), 3);
        assert_eq!(turn(&mut cache, &m, Some(&key("other", "c")), &[1, 2, 3, 7]), 0);
        assert_eq!(cache.stats().sessions, 3);
    }

    #[test]
    fn the_budget_drops_the_least_recently_used() {
        let m = model();
        let one = {
            let mut kv = m.new_cache();
            m.forward(&[1, 2], &mut kv).unwrap();
            kv.bytes()
        };
        // Room for two caches of the minimum allocation.
        let mut cache = PromptCache::new(2 * one);
        turn(&mut cache, &m, Some(&key("t", "a")), &[1, 2, 3]);
        turn(&mut cache, &m, Some(&key("t", "b")), &[4, 5, 6]);
        turn(&mut cache, &m, Some(&key("t", "a")), &[1, 2, 3, 4]);
        turn(&mut cache, &m, Some(&key("t", "c")), &[7, 8, 9]);
        assert_eq!(cache.stats(), CacheStats { sessions: 2, bytes: 2 * one });
        // b was the least recently used.
        assert_eq!(turn(&mut cache, &m, Some(&key("t", "a")), &[1, 2, 3, 4, 5]), 4);
        assert_eq!(turn(&mut cache, &m, Some(&key("t", "b")), &[4, 5, 6, 7]), 0);
        // Off: nothing is kept.
        let mut off = PromptCache::new(0);
        turn(&mut off, &m, Some(&key("t", "a")), &[1, 2, 3]);
        assert_eq!(turn(&mut off, &m, Some(&key("t", "a")), &[1, 2, 3, 4]), 0);
        assert_eq!(off.stats().sessions, 0);
    }

    #[test]
    fn forgetting_holds_even_for_a_cache_checked_out_meanwhile() {
        let m = model();
        let mut cache = PromptCache::new(1 << 30);
        let (a, b) = (key("t", "a"), key("t", "b"));
        turn(&mut cache, &m, Some(&a), &[1, 2, 3]);
        turn(&mut cache, &m, Some(&b), &[1, 2, 3]);
        cache.forget_session("t", "a");
        // b remains, and a's next turn can only fork from b's shared prefix.
        assert_eq!(cache.stats().sessions, 1);
        // A lease out while its session is forgotten is not parked again.
        let lease = cache.check_out(Some(&b), &[1, 2, 3, 4], 1, || m.new_cache()).unwrap();
        assert_eq!(lease.reused, 3);
        cache.forget_session("t", "b");
        cache.check_in(lease, vec![1, 2, 3]);
        assert_eq!(cache.stats().sessions, 0);
        // A whole scope.
        turn(&mut cache, &m, Some(&a), &[1, 2, 3]);
        turn(&mut cache, &m, Some(&key("u", "x")), &[1, 2, 3]);
        let lease = cache.check_out(Some(&a), &[1, 2, 3, 4], 1, || m.new_cache()).unwrap();
        cache.forget_scope("t");
        cache.check_in(lease, vec![1, 2, 3]);
        assert_eq!(cache.stats().sessions, 1);
        // A forget of another session does not touch a lease.
        let lease = cache.check_out(Some(&key("u", "x")), &[1, 2, 3, 4], 1, || m.new_cache()).unwrap();
        cache.forget_session("u", "y");
        cache.check_in(lease, vec![1, 2, 3]);
        assert_eq!(cache.stats().sessions, 1);
    }
}
