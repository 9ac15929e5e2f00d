//! Scalar kernels for every type: the fallback on CPUs without AVX2, the reference the SIMD
//! kernels are tested against, and (for the K-quants) the code the x86 paths compile under
//! their own target features.
//!
//! A weight block is unpacked once and then dotted with each activation row of the tile, so
//! the per-pair arithmetic is the same whatever the tile size. Integer sums are exact; the f32
//! operations run in a fixed order per pair.

// The tile loops index several per-row arrays (accumulators, pointers) by the same `j`.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;

use super::super::quant::{k_scale_min, GgmlType};
use super::activations::{QK, QK_K};
use super::{float_at, half_at, Job, Kernel};

/// The portable kernel for `dtype` (one of the supported types).
pub(crate) fn kernel(dtype: GgmlType) -> Kernel {
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => blocks32,
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => kquants,
        _ => floats,
    }
}

tiled!(
    /// Q4_0, Q4_1, Q8_0 against Q8_0 / Q8_1 activations.
    blocks32 => blocks32_tile
);
tiled!(
    /// Q4_K, Q5_K, Q6_K against Q8_K activations.
    kquants => kquants_tile
);
tiled!(
    /// F32, F16, BF16 against f32 activations.
    floats => floats_tile
);

/// Signed codes of a 32-block (Q4_0 shifted to −8..7) and the block's scale and min (0 for
/// types without one).
#[inline(always)]
fn unpack32(dtype: GgmlType, blk: &[u8], q: &mut [i8; QK]) -> (f32, f32) {
    match dtype {
        GgmlType::Q8_0 => {
            for (q, &b) in q.iter_mut().zip(&blk[2..34]) {
                *q = b as i8;
            }
            (half_at(blk, 0), 0.0)
        }
        GgmlType::Q4_0 => {
            for i in 0..16 {
                q[i] = (blk[2 + i] & 0x0F) as i8 - 8;
                q[i + 16] = (blk[2 + i] >> 4) as i8 - 8;
            }
            (half_at(blk, 0), 0.0)
        }
        _ => {
            for i in 0..16 {
                q[i] = (blk[4 + i] & 0x0F) as i8;
                q[i + 16] = (blk[4 + i] >> 4) as i8;
            }
            (half_at(blk, 0), half_at(blk, 2))
        }
    }
}

/// # Safety
/// See [`Kernel`].
unsafe fn blocks32_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let dtype = job.w.dtype;
    let bytes = dtype.block_layout().expect("supported type").bytes;
    let acts = job.acts;
    let nb = acts.cols / QK;
    let mut q = [0i8; QK];
    for r in rows {
        let row = job.row(r);
        let mut acc = [0.0f32; N];
        let mut mins = [0.0f32; N];
        for b in 0..nb {
            let (dw, mw) = unpack32(dtype, &row[b * bytes..(b + 1) * bytes], &mut q);
            for j in 0..N {
                let y = &acts.q_row(j0 + j)[b * QK..(b + 1) * QK];
                let isum: i32 = q.iter().zip(y).map(|(&w, &y)| i32::from(w) * i32::from(y)).sum();
                let at = acts.block32(j0 + j) + b;
                acc[j] += (dw * acts.d8[at * 8]) * isum as f32;
                mins[j] += mw * acts.s2[at * 2 + 1];
            }
        }
        for j in 0..N {
            // SAFETY: r is in this call's rows and j0 + j < t (the Kernel contract).
            unsafe { job.store(j0 + j, r, acc[j] + mins[j]) };
        }
    }
}

/// # Safety
/// See [`Kernel`].
unsafe fn kquants_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    // SAFETY: forwarded.
    unsafe { kquant_rows::<N>(job, rows, j0) }
}

/// # Safety
/// See [`Kernel`].
unsafe fn floats_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let dtype = job.w.dtype;
    let cols = job.acts.cols;
    let mut w = [0.0f32; 8];
    for r in rows {
        let row = job.row(r);
        let mut acc = [[0.0f32; 8]; N];
        let whole = cols / 8 * 8;
        for i in (0..whole).step_by(8) {
            for (l, w) in w.iter_mut().enumerate() {
                *w = float_at(dtype, row, i + l);
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = &job.acts.x_row(j0 + j)[i..i + 8];
                for l in 0..8 {
                    acc[l] += w[l] * x[l];
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            let x = job.acts.x_row(j0 + j);
            let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for i in whole..cols {
                sum += float_at(dtype, row, i) * x[i];
            }
            // SAFETY: as in `blocks32_tile`.
            unsafe { job.store(j0 + j, r, sum) };
        }
    }
}

/// A K-quant block unpacked: unsigned codes in value order, the scale of each 16 values, the
/// min of each 32 (Q4_K/Q5_K), and the f32 super-block scale and min scale.
struct KBlock {
    q: [u8; QK_K],
    scale: [i32; 16],
    min: [i32; 8],
    d: f32,
    dmin: f32,
}

#[inline(always)]
fn unpack_k(dtype: GgmlType, blk: &[u8], k: &mut KBlock) {
    match dtype {
        GgmlType::Q6_K => {
            // Codes 0..63; the −32 offset is applied with the activation block sums.
            for half in 0..2 {
                let ql = &blk[64 * half..64 * half + 64];
                let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                let q = &mut k.q[128 * half..128 * half + 128];
                for l in 0..32 {
                    q[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                    q[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                    q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for (s, &b) in k.scale.iter_mut().zip(&blk[192..208]) {
                *s = i32::from(b as i8);
            }
            k.d = half_at(blk, 208);
            k.dmin = 0.0;
        }
        _ => {
            let five = dtype == GgmlType::Q5_K;
            let (qh, qs) = if five { (&blk[16..48], &blk[48..176]) } else { (&blk[16..16], &blk[16..144]) };
            for c in 0..4 {
                let src = &qs[32 * c..32 * c + 32];
                let (low, high) = k.q[64 * c..64 * c + 64].split_at_mut(32);
                for l in 0..32 {
                    low[l] = src[l] & 0x0F;
                    high[l] = src[l] >> 4;
                }
                if five {
                    for l in 0..32 {
                        low[l] |= ((qh[l] >> (2 * c)) & 1) << 4;
                        high[l] |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                }
            }
            for j in 0..8 {
                let (s, m) = k_scale_min(&blk[4..16], j);
                k.scale[2 * j] = i32::from(s);
                k.scale[2 * j + 1] = i32::from(s);
                k.min[j] = i32::from(m);
            }
            k.d = half_at(blk, 0);
            k.dmin = half_at(blk, 2);
        }
    }
}

/// Q4_K / Q5_K / Q6_K rows against Q8_K activations. Written so that the integer loops
/// auto-vectorise: the x86 modules compile it under their target features. The f32 part is
/// scalar and runs in the same order everywhere, so all ISAs give the same K-quant results.
///
/// # Safety
/// See [`Kernel`].
#[inline(always)]
pub(crate) unsafe fn kquant_rows<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let dtype = job.w.dtype;
    let bytes = dtype.block_layout().expect("supported type").bytes;
    let acts = job.acts;
    let nb = acts.cols / QK_K;
    let six = dtype == GgmlType::Q6_K;
    let mut k = KBlock { q: [0; QK_K], scale: [0; 16], min: [0; 8], d: 0.0, dmin: 0.0 };
    for r in rows {
        let row = job.row(r);
        let mut acc = [0.0f32; N];
        for b in 0..nb {
            unpack_k(dtype, &row[b * bytes..(b + 1) * bytes], &mut k);
            for j in 0..N {
                let y: &[i8; QK_K] = acts.q_row(j0 + j)[b * QK_K..(b + 1) * QK_K].try_into().expect("256 codes");
                let at = acts.block256(j0 + j) + b;
                let bsums = &acts.bsums[at * 16..at * 16 + 16];
                let mut part = [0i32; 16];
                for (p, (q, y)) in part.iter_mut().zip(k.q.chunks_exact(16).zip(y.chunks_exact(16))) {
                    *p = q.iter().zip(y).map(|(&q, &y)| i32::from(q) * i32::from(y)).sum();
                }
                let dx = acts.dk[at];
                if six {
                    let isum: i32 = (0..16).map(|s| k.scale[s] * (part[s] - 32 * bsums[s])).sum();
                    acc[j] += (dx * k.d) * isum as f32;
                } else {
                    let isum: i32 = (0..16).map(|s| k.scale[s] * part[s]).sum();
                    let msum: i32 = (0..8).map(|s| k.min[s] * (bsums[2 * s] + bsums[2 * s + 1])).sum();
                    acc[j] += (dx * k.d) * isum as f32;
                    acc[j] -= (dx * k.dmin) * msum as f32;
                }
            }
        }
        for j in 0..N {
            // SAFETY: as in `blocks32_tile`.
            unsafe { job.store(j0 + j, r, acc[j]) };
        }
    }
}
