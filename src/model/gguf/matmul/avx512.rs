//! AVX-512 (F, BW, VL, VNNI) kernels: 512-bit vectors holding two 32-value blocks per step.
//!
//! Lanes 0..7 belong to block b and lanes 8..15 to block b + 1; each lane holds the exact
//! signed product sum of its 4 values (`dpbusd`, with the unsigned offset taken back lane by
//! lane as in the AVX2 kernels). An odd last block runs the same step with the second block
//! masked to zero, so every row takes one code path. Scales are brought to the lanes with
//! `vpermps` from a 4-lane f16 conversion; the activations' per-block arrays are laid out so
//! that two consecutive blocks are one plain load.

// The tile loops index several per-row arrays (accumulators, pointers) by the same `j`.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::super::quant::GgmlType;
use super::activations::QK;
use super::avx2::prefetch;
use super::{portable, Job, Kernel};

/// The AVX-512 kernel for `dtype`.
pub(crate) fn kernel(dtype: GgmlType) -> Kernel {
    match dtype {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => kquants,
        _ => floats,
    }
}

tiled!(q4_0 => q4_0_tile);
tiled!(q4_1 => q4_1_tile);
tiled!(q8_0 => q8_0_tile);
tiled!(kquants => kquants_tile);
tiled!(floats => floats_tile);

/// Sum of the 16 lanes, in a fixed order.
#[inline(always)]
unsafe fn hsum16(v: __m512) -> f32 {
    // SAFETY: AVX-512F enabled by every caller.
    unsafe {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let h = _mm256_add_ps(_mm512_castps512_ps256(v), high);
        super::avx2::hsum8(h)
    }
}

/// Masks for one step: both blocks, or only the first (an odd last block).
#[derive(Clone, Copy)]
struct Step {
    /// Bytes of the activation codes (64 or 32).
    bytes: u64,
    /// 32-bit lanes (16 or 8).
    lanes: u16,
    /// Floats of the `[0, s]` pairs (4 or 2).
    pairs: u8,
}

impl Step {
    #[inline(always)]
    fn new(two: bool) -> Step {
        if two {
            Step { bytes: u64::MAX, lanes: 0xFFFF, pairs: 0xF }
        } else {
            Step { bytes: 0xFFFF_FFFF, lanes: 0x00FF, pairs: 0x3 }
        }
    }
}

/// Per-row pointers into the activation arrays of the tile's rows.
struct ActPtrs<const N: usize> {
    q: [*const i8; N],
    d8: [*const f32; N],
    s2: [*const f32; N],
    nsum4: [*const i32; N],
}

impl<const N: usize> ActPtrs<N> {
    #[inline(always)]
    fn new(job: &Job<'_>, j0: usize) -> Self {
        let a = job.acts;
        let at = |j: usize| a.block32(j0 + j);
        ActPtrs {
            q: std::array::from_fn(|j| a.q_row(j0 + j).as_ptr()),
            d8: std::array::from_fn(|j| a.d8[at(j) * 8..].as_ptr()),
            s2: std::array::from_fn(|j| a.s2[at(j) * 2..].as_ptr()),
            nsum4: std::array::from_fn(|j| a.nsum4[at(j) * 8..].as_ptr()),
        }
    }

    /// Codes of blocks b, b + 1 of row j (masked loads never touch memory past the step).
    #[inline(always)]
    unsafe fn q(&self, j: usize, b: usize, s: Step) -> __m512i {
        // SAFETY: block b exists; the mask covers only existing blocks.
        unsafe { _mm512_maskz_loadu_epi8(s.bytes, self.q[j].add(b * QK)) }
    }

    #[inline(always)]
    unsafe fn d(&self, j: usize, b: usize, s: Step) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_maskz_loadu_ps(s.lanes, self.d8[j].add(b * 8)) }
    }

    #[inline(always)]
    unsafe fn nsum4(&self, j: usize, b: usize, s: Step) -> __m512i {
        // SAFETY: as above.
        unsafe { _mm512_maskz_loadu_epi32(s.lanes, self.nsum4[j].add(b * 8)) }
    }

    /// `[0, s_b, 0, s_b+1]` in lanes 0..3, zero elsewhere.
    #[inline(always)]
    unsafe fn s(&self, j: usize, b: usize, s: Step) -> __m512 {
        // SAFETY: as above (2 floats per block).
        unsafe { _mm512_zextps128_ps512(_mm_maskz_loadu_ps(s.pairs, self.s2[j].add(b * 2))) }
    }
}

/// The two blocks' nibbles (16 bytes at `p0` and `p1`) as 64 bytes in value order; with
/// `two == false` the second half is zero and `p1` is not read.
#[inline(always)]
unsafe fn nibbles2(p0: *const u8, p1: *const u8, two: bool) -> __m512i {
    // SAFETY: p0 (and p1 when two) point at 16 readable bytes; features enabled by the caller.
    unsafe {
        let lo = _mm512_broadcast_i32x4(_mm_loadu_si128(p0.cast()));
        let both = if two { _mm512_mask_broadcast_i32x4(lo, 0xFF00, _mm_loadu_si128(p1.cast())) } else { lo };
        let shifted = _mm512_srlv_epi64(both, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
        _mm512_maskz_and_epi32(Step::new(two).lanes, shifted, _mm512_set1_epi8(0x0F))
    }
}

/// f16 bits (as i64: up to four halves) to f32 lanes 0..3.
#[inline(always)]
unsafe fn halves4(bits: i64) -> __m128 {
    // SAFETY: F16C enabled by the caller.
    unsafe { _mm_cvtph_ps(_mm_cvtsi64_si128(bits)) }
}

/// Reads the u16 at `p`, or 0 when `read` is false.
#[inline(always)]
unsafe fn u16_or_zero(p: *const u8, read: bool) -> i64 {
    // SAFETY: p readable when `read` (caller).
    if read {
        i64::from(unsafe { p.cast::<u16>().read_unaligned() })
    } else {
        0
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_0_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let nb = job.acts.cols / QK;
    let a = ActPtrs::<N>::new(job, j0);
    // Lanes 0..7 take scale 0, lanes 8..15 scale 1.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    // SAFETY (whole body): block indices stay below nb; see ActPtrs for the activations.
    unsafe {
        for r in rows {
            let w = job.row(r).as_ptr();
            let mut acc = [_mm512_setzero_ps(); N];
            for b in (0..nb).step_by(2) {
                let two = b + 1 < nb;
                let step = Step::new(two);
                let (b0, b1) = (w.add(b * 18), w.add(b * 18 + 18));
                prefetch(b0);
                let d = halves4(u16_or_zero(b0, true) | (u16_or_zero(b1, two) << 16));
                let dw = _mm512_permutexvar_ps(spread, _mm512_zextps128_ps512(d));
                let q = nibbles2(b0.add(2), b1.add(2), two);
                for j in 0..N {
                    let corr = _mm512_slli_epi32::<3>(a.nsum4(j, b, step));
                    let lanes = _mm512_dpbusd_epi32(corr, q, a.q(j, b, step));
                    let dd = _mm512_mul_ps(dw, a.d(j, b, step));
                    acc[j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lanes), acc[j]);
                }
            }
            for j in 0..N {
                job.store(j0 + j, r, hsum16(acc[j]));
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_1_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let nb = job.acts.cols / QK;
    let a = ActPtrs::<N>::new(job, j0);
    // [d0, m0, d1, m1] → d0 in lanes 0..7, d1 in lanes 8..15.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    // SAFETY (whole body): as in q4_0_tile.
    unsafe {
        for r in rows {
            let w = job.row(r).as_ptr();
            let mut acc = [_mm512_setzero_ps(); N];
            for b in (0..nb).step_by(2) {
                let two = b + 1 < nb;
                let step = Step::new(two);
                let (b0, b1) = (w.add(b * 20), w.add(b * 20 + 20));
                prefetch(b0);
                let second = if two { i64::from(b1.cast::<u32>().read_unaligned()) } else { 0 };
                let dm = halves4(i64::from(b0.cast::<u32>().read_unaligned()) | (second << 32));
                let dm = _mm512_zextps128_ps512(dm);
                let dw = _mm512_permutexvar_ps(spread, dm);
                let q = nibbles2(b0.add(4), b1.add(4), two);
                for j in 0..N {
                    let lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, a.q(j, b, step));
                    let dd = _mm512_mul_ps(dw, a.d(j, b, step));
                    acc[j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lanes), acc[j]);
                    // [d0, m0, d1, m1] · [0, s0, 0, s1]: the min terms, in lanes 1 and 3.
                    acc[j] = _mm512_fmadd_ps(dm, a.s(j, b, step), acc[j]);
                }
            }
            for j in 0..N {
                job.store(j0 + j, r, hsum16(acc[j]));
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let nb = job.acts.cols / QK;
    let a = ActPtrs::<N>::new(job, j0);
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    // SAFETY (whole body): as in q4_0_tile, with 34-byte blocks.
    unsafe {
        for r in rows {
            let w = job.row(r).as_ptr();
            let mut acc = [_mm512_setzero_ps(); N];
            for b in (0..nb).step_by(2) {
                let two = b + 1 < nb;
                let step = Step::new(two);
                let (b0, b1) = (w.add(b * 34), w.add(b * 34 + 34));
                prefetch(b0);
                let d = halves4(u16_or_zero(b0, true) | (u16_or_zero(b1, two) << 16));
                let dw = _mm512_permutexvar_ps(spread, _mm512_zextps128_ps512(d));
                let lo = _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(2).cast()));
                let wq = if two { _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(b1.add(2).cast())) } else { lo };
                // w + 128 as unsigned bytes; the masked-off half stays 0 so it adds nothing.
                let offset = _mm512_maskz_xor_epi32(step.lanes, wq, _mm512_set1_epi8(-128));
                for j in 0..N {
                    let corr = _mm512_slli_epi32::<7>(a.nsum4(j, b, step));
                    let lanes = _mm512_dpbusd_epi32(corr, offset, a.q(j, b, step));
                    let dd = _mm512_mul_ps(dw, a.d(j, b, step));
                    acc[j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lanes), acc[j]);
                }
            }
            for j in 0..N {
                job.store(j0 + j, r, hsum16(acc[j]));
            }
        }
    }
}

/// K-quants: the portable integer loops, auto-vectorised for AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn kquants_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    // SAFETY: forwarded.
    unsafe { portable::kquant_rows::<N>(job, rows, j0) }
}

/// Up to 16 weights from index `i` of the row as f32 (lanes past `mask` zero).
#[inline(always)]
unsafe fn load16(dtype: GgmlType, p: *const u8, i: usize, mask: u16) -> __m512 {
    // SAFETY: the mask covers only values below cols (caller).
    unsafe {
        match dtype {
            GgmlType::F32 => _mm512_maskz_loadu_ps(mask, p.add(4 * i).cast()),
            GgmlType::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.add(2 * i).cast())),
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                mask,
                p.add(2 * i).cast(),
            )))),
        }
    }
}

/// F32 / F16 / BF16 rows in f32: two 16-lane accumulators per activation row (32 values a
/// step), then 16 at a time with a masked last step.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn floats_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let dtype = job.w.dtype;
    let cols = job.acts.cols;
    let width = if dtype == GgmlType::F32 { 4 } else { 2 };
    let x: [*const f32; N] = std::array::from_fn(|j| job.acts.x_row(j0 + j).as_ptr());
    // SAFETY (whole body): full loads stay below cols, the last one is masked.
    unsafe {
        for r in rows {
            let w = job.row(r).as_ptr();
            let mut acc0 = [_mm512_setzero_ps(); N];
            let mut acc1 = [_mm512_setzero_ps(); N];
            let mut i = 0;
            while i + 32 <= cols {
                prefetch(w.add(i * width));
                let (w0, w1) = (load16(dtype, w, i, 0xFFFF), load16(dtype, w, i + 16, 0xFFFF));
                for j in 0..N {
                    acc0[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[j].add(i)), acc0[j]);
                    acc1[j] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[j].add(i + 16)), acc1[j]);
                }
                i += 32;
            }
            while i < cols {
                let mask = if cols - i >= 16 { 0xFFFF } else { (1u16 << (cols - i)) - 1 };
                let w0 = load16(dtype, w, i, mask);
                for j in 0..N {
                    acc0[j] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mask, x[j].add(i)), acc0[j]);
                }
                i += 16;
            }
            for j in 0..N {
                job.store(j0 + j, r, hsum16(_mm512_add_ps(acc0[j], acc1[j])));
            }
        }
    }
}
