//! Where the generated tokens looked: the attention each new token pays to the positions
//! before it, summed over a generation, so that a reply can be attributed to the parts of
//! its prompt (the memories placed in it).
//!
//! Definition: for each generated token, in each of the last [`AttentionProbe::layers`]
//! layers, the attention probabilities of its query over every earlier position, averaged
//! over the heads; then averaged over those layers and over the generated tokens. A span's
//! share is the sum of that average over the span's positions — the fraction of the
//! reply's attention (in those layers) that landed there, between 0 and 1.
//!
//! The last layers, not all: the first layers of a decoder attend largely by position
//! (the previous token, the start of the sequence), the later ones more by content,
//! which is what "used this memory" means; see [`attribution_layers`] for the measurement.
//!
//! The probabilities are computed again from the query and the cached keys rather than
//! taken out of the fused attention kernels, which do not return them; it costs one small
//! product per probed layer and token (a `heads × head_dim` query against the keys), and
//! nothing when no probe is passed.

use std::ops::Range;

use tch::{Device, Kind, TchError, Tensor};

/// Attribution averages over the last `1 / LAYER_SHARE` of the layers.
/// Measured on SmolLM2-135M (30 layers) with replies that copy one of six memories
/// (`tests/attribution.rs`): the copied memory got 2.9–3.2× the share of the next one
/// over the last 10 layers; 2.0–2.6× over the last layer alone, 2.6–2.7× over the last
/// 5, 3.1–3.7× over the last 20 (twice the probing) and 2.1–2.7× over all 30.
const LAYER_SHARE: usize = 3;

/// How many of a model's `num_layers` last layers attribution probes.
pub fn attribution_layers(num_layers: usize) -> usize {
    num_layers.div_ceil(LAYER_SHARE).max(1)
}

/// The running sum of a generation's attention over positions; see the module docs.
pub struct AttentionProbe {
    layers: usize,
    /// Attention summed over probed layers and steps, per position, on the model's device.
    sum: Tensor,
    /// Query rows observed (probed layers × steps).
    rows: usize,
}

impl AttentionProbe {
    /// A probe of the last `layers` layers (at least one) for sequences up to `positions`.
    pub fn new(layers: usize, positions: usize, device: Device) -> Result<Self, TchError> {
        Ok(AttentionProbe {
            layers: layers.max(1),
            sum: Tensor::f_zeros([positions as i64], (Kind::Float, device))?,
            rows: 0,
        })
    }

    /// How many of the last layers are probed.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Adds one query's attention: `query` is `[heads, head_dim]` (rotated, as the
    /// attention used it), `keys` `[kv_heads, positions, head_dim]` (every position the
    /// query sees). Query head `h` reads key head `h / (heads / kv_heads)`.
    pub fn observe(&mut self, query: &Tensor, keys: &Tensor, scale: f64) -> Result<(), TchError> {
        let kv_heads = keys.size()[0];
        let positions = keys.size()[1];
        let head_dim = keys.size()[2];
        let q = query.f_to_kind(Kind::Float)?.f_reshape([kv_heads, -1, head_dim])?;
        let scores = q.f_matmul(&keys.f_to_kind(Kind::Float)?.f_transpose(1, 2)?)?.f_mul_scalar(scale)?;
        let probs = scores.f_softmax(-1, Kind::Float)?; // [kv_heads, group, positions]
        let per_position = probs.f_mean_dim([0i64, 1].as_slice(), false, Kind::Float)?;
        let _ = self.sum.f_narrow(0, 0, positions)?.f_add_(&per_position)?;
        self.rows += 1;
        Ok(())
    }

    /// Each span's share of the attention observed so far (spans are position ranges;
    /// positions past the probe's end count nothing). All zeros before any observation.
    pub fn shares(&self, spans: &[Range<usize>]) -> Result<Vec<f32>, TchError> {
        if self.rows == 0 {
            return Ok(vec![0.0; spans.len()]);
        }
        let sum = Vec::<f32>::try_from(&self.sum.f_to_device(Device::Cpu)?)?;
        let rows = self.rows as f64;
        Ok(spans
            .iter()
            .map(|s| {
                let span = sum.get(s.start.min(sum.len())..s.end.min(sum.len())).unwrap_or_default();
                (span.iter().map(|&v| f64::from(v)).sum::<f64>() / rows) as f32
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: softmax of each head's scores, by hand, averaged over heads.
    fn by_hand(query: &[f32], keys: &[f32], heads: usize, kv_heads: usize, dim: usize, scale: f32) -> Vec<f32> {
        let positions = keys.len() / (kv_heads * dim);
        let mut out = vec![0f32; positions];
        for h in 0..heads {
            let kv = h / (heads / kv_heads);
            let scores: Vec<f32> = (0..positions)
                .map(|p| {
                    let k = &keys[(kv * positions + p) * dim..][..dim];
                    query[h * dim..][..dim].iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = exp.iter().sum();
            for (o, e) in out.iter_mut().zip(&exp) {
                *o += e / total / heads as f32;
            }
        }
        out
    }

    #[test]
    fn shares_match_a_softmax_by_hand_with_grouped_heads() {
        let (heads, kv_heads, dim, positions) = (6, 2, 4, 7);
        let query: Vec<f32> = (0..heads * dim).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let keys: Vec<f32> = (0..kv_heads * positions * dim).map(|i| ((i * 5 % 13) as f32 - 6.0) / 5.0).collect();
        let expected = by_hand(&query, &keys, heads, kv_heads, dim, 0.5);
        let q = Tensor::from_slice(&query).reshape([heads as i64, dim as i64]);
        let k = Tensor::from_slice(&keys).reshape([kv_heads as i64, positions as i64, dim as i64]);
        let mut probe = AttentionProbe::new(2, 16, Device::Cpu).unwrap();
        probe.observe(&q, &k, 0.5).unwrap();
        probe.observe(&q, &k, 0.5).unwrap();
        let each: Vec<Range<usize>> = (0..positions).map(|p| p..p + 1).collect();
        let got = probe.shares(&each).unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
        // Every position together holds all the attention; past the end, none.
        let all = probe.shares(&[0..positions, positions..16, 20..30]).unwrap();
        assert!((all[0] - 1.0).abs() < 1e-5 && all[1].abs() < 1e-6 && all[2] == 0.0, "{all:?}");
    }
}
