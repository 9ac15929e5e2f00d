//! A node's search caches: the vector index, and through the observers the lexical
//! index, of the scopes this node has searched. A scope is loaded whole on its first
//! search and then kept current — by this node's own commits and by the other nodes'
//! changes it follows — until it is the least recently searched one when the cache is
//! over its budget, and is dropped.
//!
//! Point ids are this node's own: they number the entries it holds, and mean nothing
//! to another node or in Redis.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use ulid::Ulid;

use super::layout::ScopeKey;
use crate::store::records::{MemoryEntry, Scope};
use crate::store::{CommitObserver, Committed, IndexParams, MemoryStore, VectorIndex};

/// A load of at least this many points goes into the graph in the background.
const BACKGROUND_INSERT_MIN: usize = 4096;

/// A change to apply to the scopes held (from a commit here or one followed).
pub enum Change {
    Added(MemoryEntry),
    Removed { id: Ulid, scope: ScopeKey },
}

impl Change {
    fn scope(&self) -> ScopeKey {
        match self {
            Change::Added(e) => scope_of(e),
            Change::Removed { scope, .. } => scope.clone(),
        }
    }
}

pub fn scope_of(e: &MemoryEntry) -> ScopeKey {
    let s = e.scope.as_ref().cloned().unwrap_or_default();
    ScopeKey { tenant: s.tenant, user: s.user_id }
}

struct Held {
    ids: HashSet<Ulid>,
    last_used: u64,
}

#[derive(Default)]
struct State {
    held: HashMap<ScopeKey, Held>,
    /// Scopes being loaded, with the changes that arrived meanwhile (applied after).
    loading: HashMap<ScopeKey, Vec<Change>>,
    point_of: HashMap<Ulid, u64>,
    /// point → (entry id, shard, scope, kind): enough to resolve a hit and to drop it.
    located: HashMap<u64, (Ulid, u16, ScopeKey, i32)>,
    clock: u64,
}

/// Counts for `stats`.
pub struct CacheStats {
    pub entries: usize,
    pub by_kind: BTreeMap<String, usize>,
}

/// See the module documentation.
pub struct Cache {
    index: Arc<VectorIndex>,
    max_entries: usize,
    state: Mutex<State>,
    /// Serialises changes, so that the index and the observers see them in one order.
    apply: Mutex<()>,
    /// One scope loads at a time on a node; searches of loaded scopes do not wait.
    load: Mutex<()>,
    observers: RwLock<Vec<Arc<dyn CommitObserver>>>,
    next_point: AtomicU64,
}

impl Cache {
    pub fn new(params: IndexParams, max_entries: usize) -> Self {
        Self {
            index: Arc::new(VectorIndex::new(params)),
            max_entries,
            state: Mutex::new(State::default()),
            apply: Mutex::new(()),
            load: Mutex::new(()),
            observers: RwLock::new(Vec::new()),
            // 0 stands for "not held here" in the records handed out.
            next_point: AtomicU64::new(1),
        }
    }

    pub fn index(&self) -> &Arc<VectorIndex> {
        &self.index
    }

    pub fn observe(&self, observer: Arc<dyn CommitObserver>) {
        self.observers.write().push(observer);
    }

    pub fn point_of(&self, id: Ulid) -> Option<u64> {
        self.state.lock().point_of.get(&id).copied()
    }

    pub fn shard_of(&self, id: Ulid) -> Option<u16> {
        let state = self.state.lock();
        let point = state.point_of.get(&id)?;
        state.located.get(point).map(|(_, shard, _, _)| *shard)
    }

    pub fn locate(&self, point: u64) -> Option<(Ulid, u16)> {
        self.state.lock().located.get(&point).map(|(id, shard, _, _)| (*id, *shard))
    }

    /// Whether changes to `scope` matter here (held, or being loaded).
    pub fn wants(&self, scope: &ScopeKey) -> bool {
        let state = self.state.lock();
        state.held.contains_key(scope) || state.loading.contains_key(scope)
    }

    /// Whether any scope of `shard` is held or loading.
    pub fn holds_shard(&self, shard: u16) -> bool {
        let state = self.state.lock();
        state.held.keys().chain(state.loading.keys()).any(|s| s.shard() == shard)
    }

    pub fn stats(&self) -> CacheStats {
        let state = self.state.lock();
        let mut by_kind = BTreeMap::new();
        for (_, _, _, kind) in state.located.values() {
            let name = crate::store::records::Kind::try_from(*kind).map(|k| k.name()).unwrap_or("unknown");
            *by_kind.entry(name.to_owned()).or_insert(0) += 1;
        }
        CacheStats { entries: state.located.len(), by_kind }
    }

    /// Applies changes to the scopes held; queues those of scopes being loaded; ignores
    /// the rest (they are read whole when first searched).
    pub fn apply(&self, store: &dyn MemoryStore, changes: Vec<Change>) {
        let _order = self.apply.lock();
        let mut now = Vec::new();
        {
            let mut state = self.state.lock();
            for change in changes {
                let scope = change.scope();
                if let Some(queue) = state.loading.get_mut(&scope) {
                    queue.push(change);
                } else if state.held.contains_key(&scope) {
                    now.push(change);
                }
            }
        }
        self.apply_held(store, now);
    }

    /// Applies changes to held scopes (the apply lock is held).
    fn apply_held(&self, store: &dyn MemoryStore, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        let mut added = Vec::new();
        {
            let mut state = self.state.lock();
            for change in changes {
                match change {
                    Change::Removed { id, scope } => {
                        if let Some(e) = forget(&mut state, id, &scope) {
                            removed.push(e);
                        }
                    }
                    Change::Added(mut entry) => {
                        let Some(id) = entry.ulid() else { continue };
                        let scope = scope_of(&entry);
                        if state.point_of.contains_key(&id) {
                            // Held already (the load read it, or a change came twice).
                            continue;
                        }
                        let point = self.next_point.fetch_add(1, Ordering::Relaxed);
                        entry.point_id = point;
                        state.point_of.insert(id, point);
                        state.located.insert(point, (id, scope.shard(), scope.clone(), entry.kind));
                        if let Some(held) = state.held.get_mut(&scope) {
                            held.ids.insert(id);
                        }
                        added.push(entry);
                    }
                }
            }
        }
        for e in &removed {
            self.index.remove(e.point_id);
        }
        let vectors: Vec<_> = added
            .iter()
            .map(|e| (e.point_id, e.scope.clone().unwrap_or_default(), e.kind(), Arc::from(&e.embedding[..])))
            .collect();
        match vectors.len() {
            0 => {}
            1 => {
                let (p, s, k, v) = vectors.into_iter().next().expect("one");
                self.index.insert(p, &s, k, v);
            }
            // A scope loaded whole: into the graph in the background (searched exactly
            // meanwhile), so that neither this search nor the changes queued behind the
            // apply lock wait for a graph of many thousand points.
            n if n >= BACKGROUND_INSERT_MIN => self.index.insert_many_in_background(vectors),
            _ => self.index.insert_many(vectors),
        }
        self.index.rebuild_in_background_if_due();
        let committed = Committed { added: &added, removed: &removed };
        for observer in self.observers.read().iter() {
            observer.committed(store, &committed);
        }
    }

    /// Makes sure `scope` is held, reading it whole with `fetch` if not, then drops the
    /// least recently used scopes past the budget (never one of `keep`).
    pub fn ensure(
        &self,
        store: &dyn MemoryStore,
        scope: &ScopeKey,
        keep: &[ScopeKey],
        fetch: impl FnOnce() -> crate::store::Result<Vec<MemoryEntry>>,
    ) -> crate::store::Result<()> {
        if self.touch(scope) {
            return Ok(());
        }
        let _one_load = self.load.lock();
        if self.touch(scope) {
            return Ok(());
        }
        self.state.lock().loading.insert(scope.clone(), Vec::new());
        let entries = match fetch() {
            Ok(e) => e,
            Err(e) => {
                self.state.lock().loading.remove(scope);
                return Err(e);
            }
        };
        let started = std::time::Instant::now();
        let count = entries.len();
        {
            let _order = self.apply.lock();
            let queued = {
                let mut state = self.state.lock();
                state.clock += 1;
                let last_used = state.clock;
                state.held.insert(scope.clone(), Held { ids: HashSet::new(), last_used });
                state.loading.remove(scope).unwrap_or_default()
            };
            let mut changes: Vec<Change> = entries.into_iter().map(Change::Added).collect();
            changes.extend(queued);
            self.apply_held(store, changes);
        }
        tracing::debug!(tenant = %scope.tenant, user = %scope.user, entries = count,
            elapsed_ms = started.elapsed().as_millis() as u64, "scope loaded into the search cache");
        self.evict_over_budget(store, keep);
        Ok(())
    }

    /// Marks a held scope used now; false if it is not held.
    fn touch(&self, scope: &ScopeKey) -> bool {
        let mut state = self.state.lock();
        state.clock += 1;
        let now = state.clock;
        match state.held.get_mut(scope) {
            Some(held) => {
                held.last_used = now;
                true
            }
            None => false,
        }
    }

    fn evict_over_budget(&self, store: &dyn MemoryStore, keep: &[ScopeKey]) {
        loop {
            let victim = {
                let state = self.state.lock();
                if state.located.len() <= self.max_entries {
                    return;
                }
                state
                    .held
                    .iter()
                    .filter(|(s, _)| !keep.contains(s))
                    .min_by_key(|(_, h)| h.last_used)
                    .map(|(s, _)| s.clone())
            };
            let Some(victim) = victim else { return };
            self.drop_scopes(store, |s| *s == victim);
        }
    }

    /// Drops every held scope `which` selects (evicted, or of a shard whose stream this
    /// node fell behind on): the next search loads it afresh.
    pub fn drop_scopes(&self, store: &dyn MemoryStore, which: impl Fn(&ScopeKey) -> bool) {
        let _order = self.apply.lock();
        let changes: Vec<Change> = {
            let mut state = self.state.lock();
            let victims: Vec<ScopeKey> = state.held.keys().filter(|s| which(s)).cloned().collect();
            let mut changes = Vec::new();
            for scope in victims {
                if let Some(held) = state.held.remove(&scope) {
                    tracing::debug!(tenant = %scope.tenant, user = %scope.user, entries = held.ids.len(), "scope dropped from the search cache");
                    changes.extend(held.ids.into_iter().map(|id| Change::Removed { id, scope: scope.clone() }));
                }
            }
            changes
        };
        // The scopes are no longer held: remove their points directly.
        let mut removed = Vec::new();
        {
            let mut state = self.state.lock();
            for change in changes {
                if let Change::Removed { id, scope } = change {
                    if let Some(e) = forget(&mut state, id, &scope) {
                        removed.push(e);
                    }
                }
            }
        }
        for e in &removed {
            self.index.remove(e.point_id);
        }
        self.index.rebuild_in_background_if_due();
        let committed = Committed { added: &[], removed: &removed };
        for observer in self.observers.read().iter() {
            observer.committed(store, &committed);
        }
    }
}

/// Forgets an entry's point; returns a stand-in record for the observers (they need
/// its point and scope only).
fn forget(state: &mut State, id: Ulid, scope: &ScopeKey) -> Option<MemoryEntry> {
    let point = state.point_of.remove(&id)?;
    let (_, _, _, kind) = state.located.remove(&point)?;
    if let Some(held) = state.held.get_mut(scope) {
        held.ids.remove(&id);
    }
    Some(MemoryEntry {
        id: id.to_bytes().to_vec().into(),
        point_id: point,
        kind,
        scope: Some(Scope::user(scope.tenant.clone(), scope.user.clone())),
        ..Default::default()
    })
}
