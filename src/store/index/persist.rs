//! Saving and loading the HNSW graph.
//!
//! Layout under the index directory:
//! - `CURRENT`: the name of the generation to load, replaced atomically (write + rename);
//! - `<generation>/graph.hnsw.graph`, `graph.hnsw.data`: hnsw_rs's dump;
//! - `<generation>/manifest.json`: checksums of both files, written last.
//!
//! A generation is written in full under a temporary name and renamed into place before
//! `CURRENT` points at it, so a crash mid-save leaves the previous generation in use.
//! The checksums catch a corrupt or truncated file before hnsw_rs reads it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};

use super::{Graph, UnitCosine};

const BASENAME: &str = "graph";
const FORMAT: u32 = 1;

/// What happened to the saved graph at start-up.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadOutcome {
    /// Loaded; `caught_up` points written after the save were added.
    Loaded { caught_up: usize },
    /// No saved graph: built from sled.
    Missing,
    /// The saved graph failed its checks and was rebuilt from sled.
    Corrupt { reason: String },
    /// The saved graph lacked too many points to catch up; rebuilt from sled.
    Stale { missing: usize },
    /// The saved graph was linked otherwise than configured (`index.keep_pruned_links`);
    /// rebuilt from sled.
    Outdated { reason: String },
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    distance: String,
    points: usize,
    files: Vec<(String, u32, u64)>,
    /// `index.keep_pruned_links` when the graph was built. Graphs saved before the
    /// setting existed were built with it on.
    #[serde(default = "built_before_the_setting")]
    keep_pruned_links: bool,
}

fn built_before_the_setting() -> bool {
    true
}

fn checksum(path: &Path) -> std::io::Result<(u32, u64)> {
    let mut hasher = crc32fast::Hasher::new();
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher.finalize(), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn save(graph: &Graph, keep_pruned_links: bool, dir: &Path) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("saving the index ({what}): {e}");
    fs::create_dir_all(dir).map_err(|e| io("creating the directory", e))?;
    let generation = format!("g-{}", ulid::Ulid::new());
    let tmp = dir.join(format!("tmp-{generation}"));
    fs::create_dir_all(&tmp).map_err(|e| io("creating the temporary directory", e))?;
    let basename = graph.file_dump(&tmp, BASENAME).map_err(|e| format!("saving the index: {e}"))?;
    let mut files = Vec::new();
    for suffix in ["hnsw.graph", "hnsw.data"] {
        let name = format!("{basename}.{suffix}");
        let path = tmp.join(&name);
        File::open(&path).and_then(|f| f.sync_all()).map_err(|e| io(&name, e))?;
        let (crc, len) = checksum(&path).map_err(|e| io(&name, e))?;
        files.push((name, crc, len));
    }
    let manifest = Manifest {
        format: FORMAT,
        distance: std::any::type_name::<UnitCosine>().into(),
        points: graph.get_nb_point(),
        files,
        keep_pruned_links,
    };
    write_synced(&tmp.join("manifest.json"), &serde_json::to_vec_pretty(&manifest).unwrap())
        .map_err(|e| io("manifest", e))?;
    fs::rename(&tmp, dir.join(&generation)).map_err(|e| io("renaming the generation", e))?;
    write_synced(&dir.join("CURRENT.tmp"), generation.as_bytes()).map_err(|e| io("CURRENT", e))?;
    fs::rename(dir.join("CURRENT.tmp"), dir.join("CURRENT")).map_err(|e| io("CURRENT", e))?;
    sync_dir(dir).map_err(|e| io("syncing the directory", e))?;
    remove_other_generations(dir, &generation);
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Old generations and leftovers of interrupted saves; failures only cost disk space.
fn remove_other_generations(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.path().is_dir() && name != keep && (name.starts_with("g-") || name.starts_with("tmp-")) {
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!("could not remove old index files {}: {e}", entry.path().display());
            }
        }
    }
}

/// Loads the current generation, unless it is damaged or was built with other
/// `keep_pruned_links` than `keep_pruned_links`: a graph keeps the links it was built
/// with, so one built with pruned links kept would keep their harm (see
/// `config/default.toml`) until rebuilt.
pub(super) fn load(dir: &Path, keep_pruned_links: bool) -> Result<Graph, LoadOutcome> {
    let corrupt = |reason: String| LoadOutcome::Corrupt { reason };
    let current = match fs::read_to_string(dir.join("CURRENT")) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadOutcome::Missing),
        Err(e) => return Err(corrupt(format!("reading CURRENT: {e}"))),
    };
    if !current.starts_with("g-") || current.contains(['/', '\\']) {
        return Err(corrupt(format!("CURRENT names `{current}`, not a generation")));
    }
    let gen_dir: PathBuf = dir.join(&current);
    let manifest: Manifest = fs::read(gen_dir.join("manifest.json"))
        .map_err(|e| corrupt(format!("reading {current}/manifest.json: {e}")))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| corrupt(format!("{current}/manifest.json: {e}"))))?;
    if manifest.format != FORMAT || manifest.distance != std::any::type_name::<UnitCosine>() {
        return Err(corrupt(format!(
            "{current} was written in another format ({}, {})",
            manifest.format, manifest.distance
        )));
    }
    if manifest.keep_pruned_links != keep_pruned_links {
        return Err(LoadOutcome::Outdated {
            reason: format!(
                "{current} was built with keep_pruned_links = {}, configured {keep_pruned_links}",
                manifest.keep_pruned_links
            ),
        });
    }
    for (name, crc, len) in &manifest.files {
        let path = gen_dir.join(name);
        match checksum(&path) {
            Ok((c, l)) if c == *crc && l == *len => {}
            Ok((_, l)) => {
                return Err(corrupt(format!("{current}/{name}: checksum mismatch ({l} bytes, expected {len})")))
            }
            Err(e) => return Err(corrupt(format!("{current}/{name}: {e}"))),
        }
    }
    // load_hnsw's result borrows the HnswIo for its whole life (an open hnsw_rs issue).
    // Loading happens once per start, so the small reader is leaked to get a 'static
    // graph that can be swapped like a built one.
    let reader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&gen_dir, BASENAME)));
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let reader = reader; // moved in: the closure is FnOnce, so the borrow may outlive it
        reader.load_hnsw::<f32, UnitCosine>()
    }));
    match loaded {
        Ok(Ok(graph)) if graph.get_nb_point() == manifest.points => Ok(graph),
        Ok(Ok(graph)) => {
            Err(corrupt(format!("{current}: {} points, manifest says {}", graph.get_nb_point(), manifest.points)))
        }
        Ok(Err(e)) => Err(corrupt(format!("{current}: {e}"))),
        Err(_) => Err(corrupt(format!("{current}: hnsw_rs panicked while reading it"))),
    }
}
