//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cluster;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use engram::store::records::{Kind, Scope};
use engram::store::{IndexParams, NewEntry, Store, StoreConfig};
use rand::{Rng, SeedableRng};

/// Uniformly random directions (Gaussian components, normalised).
pub fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
                    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

pub fn arcs(v: &[Vec<f32>]) -> Vec<Arc<[f32]>> {
    v.iter().map(|x| Arc::from(&x[..])).collect()
}

pub fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        cache_capacity_mb: 64,
        index_save_interval_secs: 60,
        index: IndexParams::default(),
        ..Default::default()
    }
}

pub fn open(dir: &Path) -> Store {
    Store::open(&config(dir)).expect("store opens")
}

pub fn fact(tenant: &str, user: &str, text: &str, embedding: &[f32]) -> NewEntry {
    NewEntry {
        kind: Some(Kind::Fact),
        text: text.into(),
        embedding: embedding.to_vec(),
        scope: Scope::user(tenant, user),
        ..Default::default()
    }
}

/// The path of the built `engram` binary.
pub fn engram_bin() -> &'static str {
    env!("CARGO_BIN_EXE_engram")
}
