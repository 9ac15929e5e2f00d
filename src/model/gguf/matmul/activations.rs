//! Quantisation of the activation rows, once per product, as ggml does on x86.
//!
//! Each row is quantised on its own (never with statistics of other rows), so a row's codes do
//! not depend on the batch it arrives in.
//!
//! - 32-value blocks (for Q4_0, Q4_1, Q8_0 weights), as ggml's AVX `quantize_row_q8_0/q8_1`:
//!   `d = amax / 127` stored as f16, codes `round_half_even(x · (127 / amax))`, and for Q8_1
//!   `s = f16(d_f32 · Σq)`, the term that multiplies a Q4_1 block's min.
//! - 256-value blocks (for K-quant weights), as `quantize_row_q8_K_ref`: the signed value of
//!   largest magnitude `max` gives `iscale = −127 / max`, codes `min(127, nearest(iscale · x))`,
//!   `d = 1 / iscale` in f32, and the sum of every 16 codes.
//!
//! Besides the codes, the 32-blocks keep what the SIMD kernels want ready to load: the scale
//! repeated over 8 lanes, `[0, s]` (so that `[d_w, m_w] · [0, s]` puts `m_w·s` in one lane),
//! and the sums of each group of 4 codes, negated (the correction that turns an unsigned-by-
//! signed byte dot into the signed one, lane by lane).

use super::super::quant::GgmlType;
use half::f16;

/// Values per block of Q8_0 / Q8_1 activations.
pub(crate) const QK: usize = 32;
/// Values per block of Q8_K activations.
pub(crate) const QK_K: usize = 256;

/// The activation rows of one product, in the form its weight type pairs with.
pub(crate) struct Acts<'a> {
    /// Number of rows.
    pub(crate) t: usize,
    /// Values per row.
    pub(crate) cols: usize,
    /// The rows as given (float weights use them directly).
    pub(crate) x: &'a [f32],
    /// Codes, `t × cols` (empty for float weights).
    pub(crate) qs: Vec<i8>,
    /// Per 32-block: f16-rounded scale, repeated 8 times.
    pub(crate) d8: Vec<f32>,
    /// Per 32-block: `[0, s]`.
    pub(crate) s2: Vec<f32>,
    /// Per 32-block: minus the sum of codes 4k..4k+4, for k in 0..8.
    pub(crate) nsum4: Vec<i32>,
    /// Per 256-block: the f32 scale.
    pub(crate) dk: Vec<f32>,
    /// Per 256-block: the sums of each 16 codes.
    pub(crate) bsums: Vec<i32>,
}

impl<'a> Acts<'a> {
    /// Quantises `t` rows of `cols` values for weights of type `dtype`.
    pub(crate) fn new(dtype: GgmlType, x: &'a [f32], t: usize, cols: usize) -> Acts<'a> {
        let mut acts = Acts {
            t,
            cols,
            x,
            qs: Vec::new(),
            d8: Vec::new(),
            s2: Vec::new(),
            nsum4: Vec::new(),
            dk: Vec::new(),
            bsums: Vec::new(),
        };
        match dtype {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => acts.quantize_32(),
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => acts.quantize_k(),
            _ => {}
        }
        acts
    }

    /// Activation row `j` as given.
    #[inline(always)]
    pub(crate) fn x_row(&self, j: usize) -> &[f32] {
        &self.x[j * self.cols..(j + 1) * self.cols]
    }

    /// The codes of row `j`.
    #[inline(always)]
    pub(crate) fn q_row(&self, j: usize) -> &[i8] {
        &self.qs[j * self.cols..(j + 1) * self.cols]
    }

    /// Index of the first 32-block of row `j` in the per-block arrays.
    #[inline(always)]
    pub(crate) fn block32(&self, j: usize) -> usize {
        j * (self.cols / QK)
    }

    /// Index of the first 256-block of row `j` in the per-block arrays.
    #[inline(always)]
    pub(crate) fn block256(&self, j: usize) -> usize {
        j * (self.cols / QK_K)
    }

    fn quantize_32(&mut self) {
        let blocks = self.t * self.cols / QK;
        self.qs = vec![0; self.t * self.cols];
        self.d8 = Vec::with_capacity(blocks * 8);
        self.s2 = Vec::with_capacity(blocks * 2);
        self.nsum4 = Vec::with_capacity(blocks * 8);
        for (x, q) in self.x.chunks_exact(QK).zip(self.qs.chunks_exact_mut(QK)) {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(x) {
                // Never outside ±127 (|v| ≤ 127 up to rounding); the clamp keeps −128 out,
                // which the sign trick of the AVX2 Q8_0 kernel cannot take.
                let c = round_half_even(v * id).clamp(-127, 127);
                *q = c as i8;
                sum += c;
            }
            self.d8.extend([f16::from_f32(d).to_f32(); 8]);
            self.s2.extend([0.0, f16::from_f32(d * sum as f32).to_f32()]);
            self.nsum4.extend(q.chunks_exact(4).map(|g| -g.iter().map(|&c| i32::from(c)).sum::<i32>()));
        }
    }

    fn quantize_k(&mut self) {
        let blocks = self.t * self.cols / QK_K;
        self.qs = vec![0; self.t * self.cols];
        self.dk = Vec::with_capacity(blocks);
        self.bsums = Vec::with_capacity(blocks * 16);
        for (x, q) in self.x.chunks_exact(QK_K).zip(self.qs.chunks_exact_mut(QK_K)) {
            // The signed value of largest magnitude (the first one on ties), as ggml picks it.
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                self.dk.push(0.0);
                self.bsums.extend([0; 16]);
                continue;
            }
            let iscale = -127.0 / max;
            for (q, &v) in q.iter_mut().zip(x) {
                *q = round_half_even(iscale * v).min(127) as i8;
            }
            self.dk.push(1.0 / iscale);
            self.bsums.extend(q.chunks_exact(16).map(|g| g.iter().map(|&c| i32::from(c)).sum::<i32>()));
        }
    }
}

/// Rounds to the nearest integer, ties to even, for |v| < 2²²: adding 1.5·2²³ leaves no
/// fraction bits, so the default rounding mode does the rounding. This is what
/// `_mm256_round_ps(_MM_ROUND_NEAREST)` and ggml's `nearest_int` compute, and it needs no libm
/// call on targets without SSE4.1.
#[inline(always)]
fn round_half_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC) as i32
}
