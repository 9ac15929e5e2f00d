//! The vector index: an HNSW graph (hnsw_rs) over the entries' unit embeddings, kept as a
//! cache of sled.
//!
//! hnsw_rs cannot delete, so a deleted or replaced entry leaves a tombstone: its node
//! stays in the graph, and the [`PointTable`] (the set of live points) filters it out.
//! When tombstones pass a configured share of the graph, a new graph is built from the
//! live points on a background thread and swapped in; searches never wait for it, and
//! inserts wait only for the short catch-up at the swap.
//!
//! Filters are applied inside the graph walk (`FilterT`), so a search scoped to one user
//! among thousands still fills k hits. When a filter admits only a few points, an exact
//! scan over them is both faster and exact, and is chosen automatically.

mod distance;
mod persist;
mod table;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hnsw_rs::prelude::*;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use distance::{dot, normalize, UnitCosine};
pub use persist::LoadOutcome;
use table::PointTable;
pub use table::{ScopeClause, SearchFilter};

use super::records::{Kind, Scope};

/// Tuning of the graph. `max_connections` above 256 would make hnsw_rs end the process,
/// so [`IndexParams::validate`] refuses it first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexParams {
    pub max_connections: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    pub exact_search_threshold: usize,
    pub rebuild_tombstone_ratio: f64,
    pub catch_up_max_ratio: f64,
    /// Whether a node's link slots that HNSW's diversity rule leaves free are filled with
    /// the nearest candidates it dropped (hnsw_rs's `keep_pruned`). Off by default: see
    /// `config/default.toml`.
    #[serde(default)]
    pub keep_pruned_links: bool,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            max_connections: 32,
            ef_construction: 300,
            ef_search: 160,
            exact_search_threshold: 50_000,
            rebuild_tombstone_ratio: 0.25,
            catch_up_max_ratio: 0.5,
            keep_pruned_links: false,
        }
    }
}

impl IndexParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=256).contains(&self.max_connections) {
            return Err(format!("index.max_connections must be 2..=256, got {}", self.max_connections));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err("index.ef_construction and index.ef_search must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.rebuild_tombstone_ratio) || !(0.0..=1.0).contains(&self.catch_up_max_ratio) {
            return Err("index.rebuild_tombstone_ratio and index.catch_up_max_ratio must be within 0..1".into());
        }
        Ok(())
    }
}

/// A search hit: the point and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub point: u64,
    pub similarity: f32,
}

/// Points per step of a background insert: each step holds the insert gate, which a
/// rebuild's swap waits for.
const BACKGROUND_CHUNK: usize = 2048;

/// hnsw_rs keeps at most 16 layers.
const MAX_LAYERS: usize = 16;

type Graph = Hnsw<'static, f32, UnitCosine>;

fn new_graph(params: &IndexParams, capacity: usize) -> Graph {
    let mut g = Hnsw::new(params.max_connections, capacity.max(1024), MAX_LAYERS, params.ef_construction, UnitCosine);
    g.set_keeping_pruned(params.keep_pruned_links);
    g
}

/// See the module documentation.
pub struct VectorIndex {
    params: IndexParams,
    table: RwLock<PointTable>,
    /// The current graph. The lock is held only to clone or replace the `Arc`.
    graph: RwLock<Arc<Graph>>,
    /// Held shared by inserts, exclusively by the swap after a rebuild and by a save, so
    /// that neither misses a point being inserted.
    gate: RwLock<()>,
    rebuilding: AtomicBool,
    /// Points in the table whose graph insert is still under way (a bulk load going
    /// into the graph on a background thread). While there are any, searches scan the
    /// table exactly, so a point is found from the moment it is staged.
    ungraphed: RwLock<HashSet<u64>>,
    /// Bumped by every change; a save records it to skip saving an unchanged index.
    version: AtomicU64,
    saved_version: AtomicU64,
}

impl VectorIndex {
    pub fn new(params: IndexParams) -> Self {
        let graph = new_graph(&params, 0);
        Self {
            params,
            table: RwLock::new(PointTable::default()),
            graph: RwLock::new(Arc::new(graph)),
            gate: RwLock::new(()),
            rebuilding: AtomicBool::new(false),
            ungraphed: RwLock::new(HashSet::new()),
            version: AtomicU64::new(1),
            saved_version: AtomicU64::new(0),
        }
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    /// Adds a live point to the table only, without touching the graph. Used while
    /// loading from sled, before the graph is loaded or built.
    pub(crate) fn stage(&self, point: u64, scope: &Scope, kind: Kind, vector: Arc<[f32]>) {
        let mut table = self.table.write();
        let label = table.label(scope, kind);
        table.insert(point, label, &vector);
    }

    /// Adds one point (a unit vector) to the table and the graph.
    pub fn insert(&self, point: u64, scope: &Scope, kind: Kind, vector: Arc<[f32]>) {
        let _gate = self.gate.read();
        self.stage(point, scope, kind, vector.clone());
        let graph = self.graph.read().clone();
        graph.insert_slice((&vector, point as usize));
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds many points at once, inserting into the graph on all cores.
    pub fn insert_many(&self, points: Vec<(u64, Scope, Kind, Arc<[f32]>)>) {
        let _gate = self.gate.read();
        for (point, scope, kind, vector) in &points {
            self.stage(*point, scope, *kind, vector.clone());
        }
        let graph = self.graph.read().clone();
        let batch: Vec<(&[f32], usize)> = points.iter().map(|(p, _, _, v)| (&v[..], *p as usize)).collect();
        graph.parallel_insert_slice(&batch);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds many points at once and returns as soon as they are searchable: they go into
    /// the table now and into the graph on a background thread, in chunks, searches
    /// scanning the table exactly until the last chunk is in. For loading a large scope
    /// into a cache without holding up the searches and changes behind it.
    pub fn insert_many_in_background(self: &Arc<Self>, points: Vec<(u64, Scope, Kind, Arc<[f32]>)>) {
        {
            let _gate = self.gate.read();
            let mut ungraphed = self.ungraphed.write();
            for (point, scope, kind, vector) in &points {
                self.stage(*point, scope, *kind, vector.clone());
                ungraphed.insert(*point);
            }
            self.version.fetch_add(1, Ordering::Relaxed);
        }
        let index = Arc::clone(self);
        let work = move || {
            let started = std::time::Instant::now();
            for chunk in points.chunks(BACKGROUND_CHUNK) {
                // Under the gate, as any insert: a rebuild swapping graphs waits for the
                // chunk, or the chunk sees that the swap took its points already.
                let _gate = index.gate.read();
                let todo: Vec<(&[f32], usize)> = {
                    let ungraphed = index.ungraphed.read();
                    chunk
                        .iter()
                        .filter(|(p, ..)| ungraphed.contains(p))
                        .map(|(p, _, _, v)| (&v[..], *p as usize))
                        .collect()
                };
                index.graph.read().clone().parallel_insert_slice(&todo);
                let mut ungraphed = index.ungraphed.write();
                for (p, ..) in chunk {
                    ungraphed.remove(p);
                }
                index.version.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                points = points.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "a bulk insert is in the graph"
            );
        };
        if let Err(e) = std::thread::Builder::new().name("engram-index-insert".into()).spawn(work) {
            // No thread: the points stay searchable by the exact scan; say why it is slow.
            tracing::error!("could not start the background graph insert: {e}");
        }
    }

    /// Points staged but not yet in the graph (see [`VectorIndex::insert_many_in_background`]).
    pub fn ungraphed(&self) -> usize {
        self.ungraphed.read().len()
    }

    /// Marks a point deleted. Returns whether it was live.
    pub fn remove(&self, point: u64) -> bool {
        self.ungraphed.write().remove(&point);
        let removed = self.table.write().remove(point);
        if removed {
            self.version.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    /// Live points.
    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nodes in the graph that are no longer live.
    pub fn tombstones(&self) -> usize {
        let in_graph = self.graph.read().get_nb_point();
        in_graph.saturating_sub(self.len())
    }

    pub fn graph_len(&self) -> usize {
        self.graph.read().get_nb_point()
    }

    pub fn contains(&self, point: u64) -> bool {
        self.table.read().get(point).is_some()
    }

    /// The `k` live points most similar to the unit vector `query` among those the
    /// filter admits, best first.
    pub fn search(&self, query: &[f32], k: usize, filter: &SearchFilter) -> Vec<Hit> {
        self.search_tuned(query, k, filter, self.params.ef_search, self.params.exact_search_threshold)
    }

    /// [`VectorIndex::search`] with another candidate list size and exact-scan threshold
    /// than the configured ones (benchmarks and tests use it to measure the graph alone).
    pub fn search_tuned(
        &self,
        query: &[f32],
        k: usize,
        filter: &SearchFilter,
        ef_search: usize,
        exact_threshold: usize,
    ) -> Vec<Hit> {
        if k == 0 {
            return Vec::new();
        }
        let table = self.table.read();
        let compiled = table.compile(filter);
        let admitted = table.count_admitted(&compiled, exact_threshold);
        if admitted <= exact_threshold || !self.ungraphed.read().is_empty() {
            return table.exact_top_k(query, k, &compiled);
        }
        let wanted = k.min(admitted);
        let graph = self.graph.read().clone();
        let admit = |id: &usize| table.get(*id as u64).is_some_and(|p| compiled.admits(&p.label));
        let to_hits = |found: Vec<Neighbour>| {
            found.into_iter().map(|n| Hit { point: n.d_id as u64, similarity: 1.0 - n.distance })
        };
        // When the filter admits every node of the graph (no tombstones, and no other
        // scope in the index, as when one tenant owns it all) the walk needs no filter,
        // which is faster: hnsw_rs stops early. The counts can agree for an instant while
        // an insert is half-way, so the few results are still checked against the table.
        if graph.get_nb_point() == table.len() && table.admits_every_point(&compiled) {
            let hits: Vec<Hit> = to_hits(graph.search(query, k, ef_search.max(k)))
                .filter(|h| table.get(h.point).is_some_and(|p| compiled.admits(&p.label)))
                .collect();
            if hits.len() >= wanted {
                return hits;
            }
        }
        // A very selective filter can starve the walk of admitted nodes; widen it, and in
        // the end fall back to the exact scan so the caller always gets what exists.
        let mut ef = ef_search.max(k);
        for _ in 0..3 {
            let found = graph.search_filter(query, k, ef, Some(&admit));
            if found.len() >= wanted {
                return to_hits(found).collect();
            }
            ef *= 4;
        }
        table.exact_top_k(query, k, &compiled)
    }

    /// Runs `f` with a test for "is this point live and admitted by `filter`", holding
    /// the table steady meanwhile (for other retrieval methods that rank points by
    /// themselves and need the same scoping).
    pub fn with_admit<T>(&self, filter: &SearchFilter, f: impl FnOnce(&dyn Fn(u64) -> bool) -> T) -> T {
        let table = self.table.read();
        let compiled = table.compile(filter);
        f(&|point| table.get(point).is_some_and(|p| compiled.admits(&p.label)))
    }

    /// The similarity of the unit vector `query` to each of `points` that is still live,
    /// exactly (no graph walk). Hybrid search uses it to give the lexical side's finds
    /// the dense score they would have had, instead of none.
    pub fn similarities(&self, query: &[f32], points: &[u64]) -> Vec<(u64, f32)> {
        let table = self.table.read();
        points.iter().filter_map(|&p| table.get(p).map(|live| (p, dot(query, table.vector(live))))).collect()
    }

    /// Exact search by a full scan: the reference the graph search is measured against.
    pub fn exact_search(&self, query: &[f32], k: usize, filter: &SearchFilter) -> Vec<Hit> {
        let table = self.table.read();
        let compiled = table.compile(filter);
        table.exact_top_k(query, k, &compiled)
    }

    /// Live points the graph lacks (0 unless an insert is in flight or something broke).
    pub fn missing_from_graph(&self) -> usize {
        let _gate = self.gate.write();
        let members = members(&self.graph.read().clone());
        self.table.read().iter().filter(|(id, _)| !members.contains(id)).count()
    }

    /// Whether a background rebuild is running.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::Acquire)
    }

    /// Whether tombstones have passed the configured share of the graph.
    pub fn needs_rebuild(&self) -> bool {
        let graph_len = self.graph_len();
        graph_len > 0 && self.tombstones() as f64 / graph_len as f64 > self.params.rebuild_tombstone_ratio
    }

    /// Starts a rebuild on a background thread when one is due and none is running.
    pub fn rebuild_in_background_if_due(self: &Arc<Self>) {
        if !self.needs_rebuild() || self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let index = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("engram-index-rebuild".into()).spawn(move || {
            let started = std::time::Instant::now();
            index.rebuild_now();
            tracing::info!(points = index.len(), elapsed_ms = started.elapsed().as_millis() as u64, "index rebuilt");
        });
        if let Err(e) = spawned {
            tracing::error!("could not start the index rebuild thread: {e}");
            self.rebuilding.store(false, Ordering::Release);
        }
    }

    /// Builds a fresh graph of the live points and swaps it in. Searches go on against
    /// the old graph meanwhile; points inserted during the build are added at the swap.
    pub fn rebuild_now(&self) {
        metrics::counter!("engram_index_rebuilds_total").increment(1);
        let snapshot: Vec<(u64, Arc<[f32]>)> = self.table.read().iter().map(|(id, v)| (id, Arc::from(v))).collect();
        let graph = build_graph(&self.params, &snapshot);
        let in_snapshot: HashSet<u64> = snapshot.iter().map(|(id, _)| *id).collect();
        let _gate = self.gate.write();
        let table = self.table.read();
        let late: Vec<(&[f32], usize)> =
            table.iter().filter(|(id, _)| !in_snapshot.contains(id)).map(|(id, v)| (v, id as usize)).collect();
        graph.parallel_insert_slice(&late);
        *self.graph.write() = Arc::new(graph);
        // Every live point is in the new graph: a background insert skips the rest.
        self.ungraphed.write().clear();
        drop(table);
        self.version.fetch_add(1, Ordering::Relaxed);
        self.rebuilding.store(false, Ordering::Release);
    }

    /// Writes the graph under `dir` unless nothing changed since the last save.
    pub fn save(&self, dir: &Path) -> Result<bool, String> {
        let _gate = self.gate.write();
        let version = self.version.load(Ordering::Relaxed);
        if version == self.saved_version.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let graph = self.graph.read().clone();
        // hnsw_rs cannot dump an empty graph; an empty index needs no cache anyway.
        if graph.get_nb_point() == 0 {
            return Ok(false);
        }
        persist::save(&graph, self.params.keep_pruned_links, dir)?;
        self.saved_version.store(version, Ordering::Relaxed);
        Ok(true)
    }

    /// After all live points are staged from sled: load the saved graph from `dir` and
    /// add the points written after it was saved, or rebuild when the file is missing,
    /// corrupt or too far behind. Never trusts the file over the table.
    pub fn load_or_rebuild(&self, dir: &Path) -> LoadOutcome {
        let outcome = match persist::load(dir, self.params.keep_pruned_links) {
            Ok(mut graph) => {
                // Catch-up inserts link as configured.
                graph.set_keeping_pruned(self.params.keep_pruned_links);
                let members = members(&graph);
                let table = self.table.read();
                let missing: Vec<(&[f32], usize)> =
                    table.iter().filter(|(id, _)| !members.contains(id)).map(|(id, v)| (v, id as usize)).collect();
                let too_far = missing.len() as f64 > self.params.catch_up_max_ratio * table.len().max(1) as f64;
                if too_far && !missing.is_empty() {
                    LoadOutcome::Stale { missing: missing.len() }
                } else {
                    graph.parallel_insert_slice(&missing);
                    let caught_up = missing.len();
                    drop(table);
                    *self.graph.write() = Arc::new(graph);
                    LoadOutcome::Loaded { caught_up }
                }
            }
            Err(e) => e,
        };
        match outcome {
            LoadOutcome::Loaded { caught_up } => {
                // Saved already, up to the catch-up.
                let v = self.version.load(Ordering::Relaxed);
                self.saved_version.store(if caught_up == 0 { v } else { 0 }, Ordering::Relaxed);
            }
            _ => self.rebuild_now(),
        }
        outcome
    }
}

/// The points a graph holds, live or not.
fn members(graph: &Graph) -> HashSet<u64> {
    // hnsw_rs's point iterator panics on an empty graph.
    if graph.get_nb_point() == 0 {
        return HashSet::new();
    }
    graph.get_point_indexation().into_iter().map(|p| p.get_origin_id() as u64).collect()
}

fn build_graph(params: &IndexParams, points: &[(u64, Arc<[f32]>)]) -> Graph {
    let graph = new_graph(params, points.len());
    let batch: Vec<(&[f32], usize)> = points.iter().map(|(id, v)| (&v[..], *id as usize)).collect();
    graph.parallel_insert_slice(&batch);
    graph
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Arc<[f32]> {
        // A small deterministic generator: the test needs spread, not quality.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 20_000) as f32 / 10_000.0 - 1.0
            })
            .collect();
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= norm);
        v.into()
    }

    /// A bulk load is searchable at once (exact scan), ends up whole in the graph, and
    /// neither a removal nor a rebuild during it leaves a point twice or a dead one live.
    #[test]
    fn a_background_insert_is_searchable_at_once_and_ends_in_the_graph() {
        let index = Arc::new(VectorIndex::new(IndexParams { exact_search_threshold: 0, ..IndexParams::default() }));
        let scope = Scope::user("t", "u");
        let points: Vec<_> = (1..=6000u64).map(|p| (p, scope.clone(), Kind::Fact, unit(p, 32))).collect();
        index.insert_many_in_background(points);
        assert_eq!(index.len(), 6000);
        for p in [1u64, 2500, 6000] {
            let hits = index.search(&unit(p, 32), 1, &SearchFilter::all());
            assert_eq!(hits[0].point, p);
        }
        assert!(index.remove(3000));
        index.rebuild_now();
        let started = std::time::Instant::now();
        while index.ungraphed() > 0 {
            assert!(started.elapsed() < std::time::Duration::from_secs(120), "the background insert never ended");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(index.len(), 5999);
        assert!(index.graph_len() <= 6000, "a point went into the graph twice: {}", index.graph_len());
        // Now through the graph (approximate: nearly all found first by their own vector).
        let probes: Vec<u64> = (1..=6000u64).step_by(37).filter(|p| *p != 3000).collect();
        let found = probes
            .iter()
            .filter(|p| index.search(&unit(**p, 32), 1, &SearchFilter::all()).first().map(|h| h.point) == Some(**p))
            .count();
        assert!(found * 100 >= probes.len() * 97, "the graph found {found} of {}", probes.len());
        assert!(index.search(&unit(3000, 32), 1, &SearchFilter::all()).first().map(|h| h.point) != Some(3000));
    }
}
