//! The in-memory side of the index: for every live point, its vector and who it belongs
//! to. The HNSW graph may hold points that are gone from here (tombstones); a point is
//! live exactly when it is in this table, which is rebuilt from sled at every start.
//!
//! The vectors sit in one contiguous row-major block (a removal moves the last row into
//! the hole), with each row's label beside it, so that an exact scan over a scope reads
//! memory front to back: at 100,000 × 384 that is one pass over 150 MB.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::distance::dot;
use super::Hit;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label {
    tenant: Sym,
    user: Sym,
    agent: Sym,
    session: Sym,
    kind: u8,
}

pub struct LivePoint {
    pub label: Label,
    /// Its row in the vector block.
    row: u32,
}

#[derive(Default)]
pub struct PointTable {
    points: HashMap<u64, LivePoint, BuildHasherDefault<PointHasher>>,
    symbols: HashMap<Box<str>, Sym>,
    /// Dimension of every vector, set by the first insert.
    dim: usize,
    /// Row-major vectors of the live points, row `r` at `r * dim..(r + 1) * dim`.
    vectors: Vec<f32>,
    /// Per row: its point and its label.
    row_point: Vec<u64>,
    row_label: Vec<Label>,
    /// Live points per label, so that the size of a scope is known without a scan.
    label_counts: HashMap<Label, usize>,
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

    /// Adds a point, or replaces its label and vector if it is already live. Every
    /// vector must have the dimension of the first one (the store checks it first).
    pub fn insert(&mut self, point: u64, label: Label, vector: &[f32]) {
        if self.row_point.is_empty() {
            self.dim = vector.len();
        }
        assert_eq!(vector.len(), self.dim, "a vector of another dimension than the index's");
        *self.label_counts.entry(label).or_default() += 1;
        if let Some(live) = self.points.get_mut(&point) {
            let old = std::mem::replace(&mut live.label, label);
            let row = live.row as usize;
            self.row_label[row] = label;
            self.vectors[row * self.dim..(row + 1) * self.dim].copy_from_slice(vector);
            self.uncount(old);
            return;
        }
        let row = u32::try_from(self.row_point.len()).expect("fewer than 2^32 live points");
        self.points.insert(point, LivePoint { label, row });
        self.vectors.extend_from_slice(vector);
        self.row_point.push(point);
        self.row_label.push(label);
    }

    fn uncount(&mut self, label: Label) {
        if let Some(n) = self.label_counts.get_mut(&label) {
            *n -= 1;
            if *n == 0 {
                self.label_counts.remove(&label);
            }
        }
    }

    pub fn remove(&mut self, point: u64) -> bool {
        let Some(live) = self.points.remove(&point) else { return false };
        self.uncount(live.label);
        // The last row moves into the hole.
        let (row, last) = (live.row as usize, self.row_point.len() - 1);
        if row != last {
            let moved = self.row_point[last];
            self.vectors.copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.row_point[row] = moved;
            self.row_label[row] = self.row_label[last];
            self.points.get_mut(&moved).expect("every row is a live point").row = row as u32;
        }
        self.vectors.truncate(last * self.dim);
        self.row_point.pop();
        self.row_label.pop();
        true
    }

    pub fn get(&self, point: u64) -> Option<&LivePoint> {
        self.points.get(&point)
    }

    /// The vector of a live point.
    pub fn vector(&self, point: &LivePoint) -> &[f32] {
        let row = point.row as usize;
        &self.vectors[row * self.dim..(row + 1) * self.dim]
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Every live point with its vector, in row order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[f32])> {
        let dim = self.dim.max(1);
        self.row_point.iter().copied().zip(self.vectors.chunks_exact(dim))
    }

    /// The `k` admitted points most similar to the unit vector `query`, best first (ties
    /// by point id), by one pass over the vector block.
    pub fn exact_top_k(&self, query: &[f32], k: usize, filter: &CompiledFilter) -> Vec<Hit> {
        if k == 0 || self.row_point.is_empty() {
            return Vec::new();
        }
        let mut top = TopK::new(k);
        let rows = self.vectors.chunks_exact(self.dim).zip(&self.row_label).zip(&self.row_point);
        if filter.admits_all {
            for ((v, _), &point) in rows {
                top.push(point, dot(query, v));
            }
        } else {
            for ((v, label), &point) in rows {
                if filter.admits(label) {
                    top.push(point, dot(query, v));
                }
            }
        }
        top.into_sorted()
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

    /// How many live points the filter admits, stopping once past `limit`. Counted per
    /// label, not per point.
    pub fn count_admitted(&self, filter: &CompiledFilter, limit: usize) -> usize {
        if filter.admits_all {
            return self.points.len();
        }
        let mut admitted = 0;
        for (label, n) in &self.label_counts {
            if filter.admits(label) {
                admitted += n;
                if admitted > limit {
                    break;
                }
            }
        }
        admitted
    }
}

impl PointTable {
    /// Whether the filter admits every live point (checked per label, so it stops at the
    /// first label of another scope).
    pub fn admits_every_point(&self, filter: &CompiledFilter) -> bool {
        filter.admits_all || self.label_counts.keys().all(|label| filter.admits(label))
    }
}

/// The best `k` of a stream of scored points: a buffer of up to `2k` that is cut back to
/// the best `k` when full, after which anything below the k-th score is skipped at once.
struct TopK {
    k: usize,
    hits: Vec<Hit>,
    /// The k-th best score once `k` are known, `-inf` before.
    floor: f32,
}

fn best_first(a: &Hit, b: &Hit) -> std::cmp::Ordering {
    b.similarity.total_cmp(&a.similarity).then(a.point.cmp(&b.point))
}

impl TopK {
    fn new(k: usize) -> Self {
        Self { k, hits: Vec::with_capacity(2 * k), floor: f32::NEG_INFINITY }
    }

    #[inline]
    fn push(&mut self, point: u64, similarity: f32) {
        if similarity < self.floor {
            return;
        }
        self.hits.push(Hit { point, similarity });
        if self.hits.len() == 2 * self.k {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if self.hits.len() > self.k {
            self.hits.select_nth_unstable_by(self.k - 1, best_first);
            self.hits.truncate(self.k);
            self.floor = self.hits[self.k - 1].similarity;
        }
    }

    fn into_sorted(mut self) -> Vec<Hit> {
        self.cut();
        self.hits.sort_unstable_by(best_first);
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(scopes: &[(&str, &str, Kind)]) -> PointTable {
        let mut t = PointTable::default();
        for (i, (tenant, user, kind)) in scopes.iter().enumerate() {
            let label = t.label(&Scope::user(*tenant, *user), *kind);
            t.insert(i as u64, label, &[1.0f32]);
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

    fn label(t: &mut PointTable, user: &str) -> Label {
        t.label(&Scope::user("t", user), Kind::Fact)
    }

    fn scoped(t: &PointTable, user: &str) -> CompiledFilter {
        t.compile(&SearchFilter::clause(ScopeClause {
            tenant: Some("t".into()),
            user_id: Some(user.into()),
            ..Default::default()
        }))
    }

    #[test]
    fn removal_moves_the_last_row_and_replacement_keeps_counts() {
        let mut t = PointTable::default();
        let (a, b) = (label(&mut t, "a"), label(&mut t, "b"));
        for p in 0..5u64 {
            t.insert(p, if p % 2 == 0 { a } else { b }, &[p as f32, 1.0]);
        }
        assert!(t.remove(1));
        assert!(!t.remove(1));
        // Point 4 moved into row 1; every point still reads its own vector.
        for p in [0u64, 2, 3, 4] {
            assert_eq!(t.vector(t.get(p).unwrap()), &[p as f32, 1.0]);
        }
        assert_eq!(t.count_admitted(&scoped(&t, "a"), 100), 3);
        assert_eq!(t.count_admitted(&scoped(&t, "b"), 100), 1);
        // A replacement changes the vector and the label in place.
        t.insert(3, a, &[9.0, 9.0]);
        assert_eq!((t.len(), t.count_admitted(&scoped(&t, "a"), 100)), (4, 4));
        assert_eq!(t.count_admitted(&scoped(&t, "b"), 100), 0);
        assert_eq!(t.vector(t.get(3).unwrap()), &[9.0, 9.0]);
        assert!(t.count_admitted(&scoped(&t, "a"), 2) > 2, "past the limit, the count says so");
        let rows: Vec<(u64, Vec<f32>)> = t.iter().map(|(p, v)| (p, v.to_vec())).collect();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|(p, v)| t.vector(t.get(*p).unwrap()) == &v[..]));
        for p in [0u64, 2, 3, 4] {
            assert!(t.remove(p));
        }
        assert_eq!((t.len(), t.iter().count(), t.count_admitted(&scoped(&t, "a"), 100)), (0, 0, 0));
    }

    #[test]
    fn the_scan_matches_a_sort_of_every_admitted_point() {
        let mut t = PointTable::default();
        let (a, b) = (label(&mut t, "a"), label(&mut t, "b"));
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        };
        let mut kept = Vec::new();
        for p in 0..3000u64 {
            let v: Vec<f32> = (0..24).map(|_| next()).collect();
            // Some exact repeats, to exercise the ties.
            let v =
                if p % 10 == 9 { kept.last().map(|(_, _, v): &(u64, Label, Vec<f32>)| v.clone()).unwrap() } else { v };
            let l = if p % 3 == 0 { b } else { a };
            t.insert(p, l, &v);
            kept.push((p, l, v));
        }
        for p in (0..3000u64).step_by(7) {
            t.remove(p);
        }
        kept.retain(|(p, ..)| p % 7 != 0);
        let query: Vec<f32> = (0..24).map(|_| next()).collect();
        for (filter, admits) in [(t.compile(&SearchFilter::all()), None), (scoped(&t, "a"), Some(a))] {
            for k in [1, 10, 100, 5000] {
                let mut want: Vec<Hit> = kept
                    .iter()
                    .filter(|(_, l, _)| admits.is_none_or(|a| *l == a))
                    .map(|(p, _, v)| Hit { point: *p, similarity: dot(&query, v) })
                    .collect();
                want.sort_unstable_by(best_first);
                want.truncate(k);
                assert_eq!(t.exact_top_k(&query, k, &filter), want, "k={k}");
            }
        }
    }
}
