//! The in-memory side of the index: for every live point, its vector and who it belongs
//! to. The HNSW graph may hold points that are gone from here (tombstones); a point is
//! live exactly when it is in this table, which is rebuilt from sled at every start.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::store::records::{Kind, Scope};

/// One clause of a search filter: every field that is `Some` must match. A field that
/// is `Some("")` matches entries where that part of the scope is empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeClause {
    pub tenant: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    /// Empty means every kind.
    pub kinds: Vec<Kind>,
}

/// Which entries a search may return: those matching any clause. No clause admits all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFilter {
    pub any_of: Vec<ScopeClause>,
}

impl SearchFilter {
    pub fn all() -> Self {
        Self::default()
    }
    pub fn clause(clause: ScopeClause) -> Self {
        Self { any_of: vec![clause] }
    }
}

/// Scope strings are interned so that a point's label is a few integers and the filter
/// test inside the graph walk is integer compares.
type Sym = u32;

/// Who a point belongs to, in interned form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    tenant: Sym,
    user: Sym,
    agent: Sym,
    session: Sym,
    kind: u8,
}

pub struct LivePoint {
    pub label: Label,
    pub vector: Arc<[f32]>,
}

#[derive(Default)]
pub struct PointTable {
    points: HashMap<u64, LivePoint, BuildHasherDefault<PointHasher>>,
    symbols: HashMap<Box<str>, Sym>,
}

/// A filter clause with its strings resolved to symbols. `None` in `resolved` means the
/// clause names a string no point has, so it can admit nothing.
struct ResolvedClause {
    fields: [Option<Sym>; 4],
    kinds: u8,
}

/// A filter ready to test labels quickly.
pub struct CompiledFilter {
    clauses: Vec<ResolvedClause>,
    admits_all: bool,
}

/// Point ids are sequential integers, not attacker-chosen keys: a multiplicative hash
/// (as in rustc's FxHash) spreads them well and costs a fraction of SipHash, which
/// matters because the graph walk looks up every node it visits.
#[derive(Default)]
pub struct PointHasher(u64);

impl Hasher for PointHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl CompiledFilter {
    pub fn admits_all(&self) -> bool {
        self.admits_all
    }

    pub fn admits(&self, label: &Label) -> bool {
        self.admits_all
            || self.clauses.iter().any(|c| {
                let have = [label.tenant, label.user, label.agent, label.session];
                c.fields.iter().zip(have).all(|(want, have)| want.is_none_or(|w| w == have))
                    && (c.kinds == 0 || c.kinds & (1 << label.kind) != 0)
            })
    }
}

impl PointTable {
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.symbols.get(s) {
            return sym;
        }
        let sym = self.symbols.len() as Sym;
        self.symbols.insert(s.into(), sym);
        sym
    }

    pub fn label(&mut self, scope: &Scope, kind: Kind) -> Label {
        Label {
            tenant: self.intern(&scope.tenant),
            user: self.intern(&scope.user_id),
            agent: self.intern(&scope.agent_id),
            session: self.intern(&scope.session_id),
            kind: kind as u8,
        }
    }

    pub fn insert(&mut self, point: u64, label: Label, vector: Arc<[f32]>) {
        self.points.insert(point, LivePoint { label, vector });
    }

    pub fn remove(&mut self, point: u64) -> bool {
        self.points.remove(&point).is_some()
    }

    pub fn get(&self, point: u64) -> Option<&LivePoint> {
        self.points.get(&point)
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &LivePoint)> {
        self.points.iter().map(|(&id, p)| (id, p))
    }

    pub fn compile(&self, filter: &SearchFilter) -> CompiledFilter {
        let clauses = filter
            .any_of
            .iter()
            .filter_map(|c| {
                let mut fields = [None; 4];
                for (slot, want) in fields.iter_mut().zip([&c.tenant, &c.user_id, &c.agent_id, &c.session_id]) {
                    if let Some(s) = want {
                        // A string never interned belongs to no point: the clause is void.
                        *slot = Some(*self.symbols.get(s.as_str())?);
                    }
                }
                let kinds = c.kinds.iter().fold(0u8, |acc, k| acc | (1 << *k as u8));
                Some(ResolvedClause { fields, kinds })
            })
            .collect();
        CompiledFilter { clauses, admits_all: filter.any_of.is_empty() }
    }

    /// How many live points the filter admits, stopping once past `limit`.
    pub fn count_admitted(&self, filter: &CompiledFilter, limit: usize) -> usize {
        if filter.admits_all {
            return self.points.len();
        }
        self.points.values().filter(|p| filter.admits(&p.label)).take(limit + 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(scopes: &[(&str, &str, Kind)]) -> PointTable {
        let mut t = PointTable::default();
        for (i, (tenant, user, kind)) in scopes.iter().enumerate() {
            let label = t.label(&Scope::user(*tenant, *user), *kind);
            t.insert(i as u64, label, Arc::from(vec![1.0f32]));
        }
        t
    }

    #[test]
    fn clauses_are_or_of_ands() {
        let t = table_with(&[
            ("t1", "alice", Kind::Fact),
            ("t1", "", Kind::Knowledge),
            ("t1", "bob", Kind::Fact),
            ("t2", "alice", Kind::Fact),
        ]);
        let f = t.compile(&SearchFilter {
            any_of: vec![
                ScopeClause { tenant: Some("t1".into()), user_id: Some("alice".into()), ..Default::default() },
                ScopeClause {
                    tenant: Some("t1".into()),
                    user_id: Some("".into()),
                    kinds: vec![Kind::Knowledge],
                    ..Default::default()
                },
            ],
        });
        let admitted: Vec<u64> = (0..4).filter(|i| f.admits(&t.get(*i).unwrap().label)).collect();
        assert_eq!(admitted, vec![0, 1]);
        assert_eq!(t.count_admitted(&f, 100), 2);
    }

    #[test]
    fn unknown_strings_admit_nothing_and_empty_filter_admits_all() {
        let t = table_with(&[("t1", "alice", Kind::Fact)]);
        let none =
            t.compile(&SearchFilter::clause(ScopeClause { user_id: Some("mallory".into()), ..Default::default() }));
        assert!(!none.admits(&t.get(0).unwrap().label));
        assert!(t.compile(&SearchFilter::all()).admits(&t.get(0).unwrap().label));
    }
}
