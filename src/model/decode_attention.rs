//! Attention of one new token over the cached keys and values, on the CPU, spread over the
//! quantised products' threads.
//!
//! At a decode step this is the only work that grows with the context: every cached key
//! and value is read once (SmolLM2 at 1,000 positions: 46 MB, half the weights' bytes).
//! Through libtorch it ran on one thread (libtorch stays single-threaded beside the
//! quantised products, see `Llama::pick_torch_threads`) while the other core waited;
//! here the heads are shared out over the same [`Threads`] as the products.

use super::gguf::matmul::Threads;

/// Where one layer's cache lies: `[kv_heads, capacity, head_dim]` f32, contiguous.
pub struct CacheView<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub capacity: usize,
}

/// The output pointer shared by the threads; each writes only its own heads' rows.
struct Out(*mut f32);
// SAFETY: threads write disjoint rows (one per head, each head on one thread), and the
// buffer outlives `Threads::run`, which returns only when every share is done.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Row `h` of `[heads, width]`.
    ///
    /// # Safety
    /// `h` in range, and no other thread touches that row meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, h: usize, width: usize) -> &mut [f32] {
        // SAFETY: forwarded from the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(h * width), width) }
    }
}

/// `softmax(q·Kᵀ · scale) · V` for each of `heads` query heads of `q` (`[heads, head_dim]`),
/// over the first `len` cached positions; query head `h` reads key/value head
/// `h / (heads / kv_heads)`. Returns `[heads, head_dim]`.
pub fn attend(
    threads: &Threads,
    q: &[f32],
    cache: &CacheView<'_>,
    len: usize,
    heads: usize,
    kv_heads: usize,
    scale: f32,
) -> Vec<f32> {
    let head_dim = q.len() / heads;
    let group = heads / kv_heads;
    assert!(len <= cache.capacity && cache.keys.len() >= kv_heads * cache.capacity * head_dim);
    let mut out = vec![0f32; heads * head_dim];
    let shared = Out(out.as_mut_ptr());
    let count = threads.count();
    threads.run(&|share| {
        let mut scores = vec![0f32; len];
        for h in (share..heads).step_by(count) {
            let base = (h / group) * cache.capacity * head_dim;
            let keys = &cache.keys[base..base + len * head_dim];
            let values = &cache.values[base..base + len * head_dim];
            let query = &q[h * head_dim..(h + 1) * head_dim];
            // SAFETY: row h of `out` is written by this share alone (see `Out`).
            let row = unsafe { shared.row(h, head_dim) };
            one_head(query, keys, values, &mut scores, row, scale);
        }
    });
    out
}

/// One query head over its key/value head's `len` positions, into `row`. Compiled for
/// AVX2 where the CPU has it (the crate is built for the baseline x86-64, whose vectors are
/// half as wide), the same code otherwise.
fn one_head(query: &[f32], keys: &[f32], values: &[f32], scores: &mut [f32], row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { one_head_avx2(query, keys, values, scores, row, scale) };
        }
    }
    one_head_body(query, keys, values, scores, row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_head_avx2(query: &[f32], keys: &[f32], values: &[f32], scores: &mut [f32], row: &mut [f32], scale: f32) {
    one_head_body(query, keys, values, scores, row, scale)
}

#[inline(always)]
fn one_head_body(query: &[f32], keys: &[f32], values: &[f32], scores: &mut [f32], row: &mut [f32], scale: f32) {
    let head_dim = query.len();
    let mut max = f32::NEG_INFINITY;
    for (score, key) in scores.iter_mut().zip(keys.chunks_exact(head_dim)) {
        *score = dot(query, key) * scale;
        max = max.max(*score);
    }
    let mut sum = 0f32;
    for score in scores.iter_mut() {
        *score = (*score - max).exp();
        sum += *score;
    }
    row.fill(0.0);
    for (weight, value) in scores.iter().zip(values.chunks_exact(head_dim)) {
        let w = weight / sum;
        for (o, v) in row.iter_mut().zip(value) {
            *o += w * v;
        }
    }
}

/// A dot product in eight independent lanes, which the compiler turns into vector code.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_softmax_attention_with_grouped_heads() {
        let (heads, kv_heads, head_dim, capacity, len) = (6, 2, 16, 40, 33);
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let q: Vec<f32> = (0..heads * head_dim).map(|i| value(i + 3)).collect();
        let keys: Vec<f32> = (0..kv_heads * capacity * head_dim).map(|i| value(i * 3 + 1)).collect();
        let values: Vec<f32> = (0..kv_heads * capacity * head_dim).map(|i| value(i * 5 + 2)).collect();
        let cache = CacheView { keys: &keys, values: &values, capacity };
        let scale = 0.25;
        for threads in [1, 2] {
            let got = attend(&Threads::new(threads).unwrap(), &q, &cache, len, heads, kv_heads, scale);
            for h in 0..heads {
                let kv = h / (heads / kv_heads);
                let at = |p: usize, d: usize| kv * capacity * head_dim + p * head_dim + d;
                let scores: Vec<f64> = (0..len)
                    .map(|p| (0..head_dim).map(|d| (q[h * head_dim + d] * keys[at(p, d)]) as f64).sum::<f64>() * 0.25)
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..head_dim {
                    let expected: f64 = (0..len).map(|p| weights[p] / total * values[at(p, d)] as f64).sum();
                    let actual = got[h * head_dim + d] as f64;
                    assert!((actual - expected).abs() < 1e-5, "head {h} dim {d}: {actual} against {expected}");
                }
            }
        }
    }
}
