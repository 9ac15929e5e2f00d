//! AVX2 + FMA + F16C kernels (256-bit vectors, one 32-value block per step).
//!
//! Per block the weight codes are unpacked once into 32 bytes, then each activation row of the
//! tile is dotted with them in 8 i32 lanes, lane k holding the exact sum of products 4k..4k+4,
//! and accumulated as `acc += (d_w·d_x) · lanes` with FMA. Lane k always holds the *signed*
//! product sum of its four values, whether it came from `maddubs`+`madd` or from AVX-VNNI's
//! `dpbusd` (which only multiplies unsigned by signed bytes, so its unsigned offset is taken back
//! lane by lane with the activation's 4-sums): a CPU with AVX-VNNI gives bitwise the same
//! results as one without.
//!
//! Only unaligned loads are used; rows and blocks have no alignment.

// The tile loops index several per-row arrays (accumulators, pointers) by the same `j`.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::super::quant::GgmlType;
use super::activations::QK;
use super::{portable, Job, Kernel, TILE};

/// The AVX2 kernel for `dtype`; `vnni` selects the AVX-VNNI variants (same results).
pub(crate) fn kernel(dtype: GgmlType, vnni: bool) -> Kernel {
    match (dtype, vnni) {
        (GgmlType::Q4_0, false) => q4_0,
        (GgmlType::Q4_0, true) => q4_0_vnni,
        (GgmlType::Q4_1, false) => q4_1,
        (GgmlType::Q4_1, true) => q4_1_vnni,
        (GgmlType::Q8_0, false) => q8_0,
        (GgmlType::Q8_0, true) => q8_0_vnni,
        (GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K, _) => kquants,
        _ => floats,
    }
}

tiled!(q4_0 => q4_0_plain_tile);
tiled!(q4_0_vnni => q4_0_vnni_tile);
tiled!(q4_1 => q4_1_plain_tile);
tiled!(q4_1_vnni => q4_1_vnni_tile);
tiled!(q8_0 => q8_0_plain_tile);
tiled!(q8_0_vnni => q8_0_vnni_tile);
tiled!(kquants => kquants_tile);
tiled!(floats => floats_tile);

/// Defines the two compiled variants of a block kernel: plain AVX2 and AVX2 + AVX-VNNI.
macro_rules! variants {
    ($body:ident => $plain:ident, $vnni:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $plain<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
            // SAFETY: forwarded (the Kernel contract); the features are enabled here.
            unsafe { $body::<N, false>(job, rows, j0) }
        }
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        unsafe fn $vnni<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
            // SAFETY: as above.
            unsafe { $body::<N, true>(job, rows, j0) }
        }
    };
}

variants!(q4_0_body => q4_0_plain_tile, q4_0_vnni_tile);
variants!(q4_1_body => q4_1_plain_tile, q4_1_vnni_tile);
variants!(q8_0_body => q8_0_plain_tile, q8_0_vnni_tile);

/// `acc + Σ` of unsigned `u` × signed `s` bytes, 4 per i32 lane. Without VNNI the pair sums go
/// through i16, which cannot saturate here: every caller's unsigned operand is ≤ 15 or ≤ 128
/// against |s| ≤ 127.
#[inline(always)]
unsafe fn dot_u8i8<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    // SAFETY (whole fn): called only from the functions `variants!` defines, whose target
    // features include avxvnni exactly when VNNI is true.
    unsafe {
        if VNNI {
            _mm256_dpbusd_avx_epi32(acc, u, s)
        } else {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
        }
    }
}

/// Sum of the 8 lanes, in a fixed order.
#[inline(always)]
pub(crate) unsafe fn hsum8(v: __m256) -> f32 {
    // SAFETY: AVX is implied by every caller's target features.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// The 32 nibbles of a Q4 block (16 bytes at `p`) as bytes 0..15, in value order: the low
/// nibbles are values 0..15, the high nibbles values 16..31.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: p points at 16 readable bytes (caller); AVX2 enabled by the caller.
    unsafe {
        let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let shifted = _mm256_srlv_epi64(raw, _mm256_setr_epi64x(0, 0, 4, 4));
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
    }
}

/// The f16 at `p`, as f32 in lane 0 of the result (lanes 1..3 from the following f16s when
/// `bits` holds them).
#[inline(always)]
unsafe fn halves(bits: i32) -> __m128 {
    // SAFETY: F16C enabled by the caller.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(bits)) }
}

/// How far ahead of the current weight byte to prefetch. The hardware prefetchers alone left
/// the kernels waiting on memory half the time (each matrix is a short stream of 0.3–2 MB);
/// asking 2 KB ahead doubled the decode throughput on the target machine (1–4 KB measured
/// alike, 256 B did little).
const PREFETCH: usize = 2048;

/// Asks for the weight bytes [`PREFETCH`] ahead of `p`, so that the following rows are on
/// their way while this one is computed.
#[inline(always)]
pub(crate) unsafe fn prefetch(p: *const u8) {
    // SAFETY: a prefetch never faults, whatever the address (hence wrapping_add); SSE is
    // baseline on x86-64.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast()) }
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
}

/// Q4_0 × Q8_0: Σ(q − 8)·y = Σ q·y − 8·Σy, the second term from the activation's 4-sums.
#[inline(always)]
unsafe fn q4_0_body<const N: usize, const VNNI: bool>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    debug_assert!(N <= TILE);
    let nb = job.acts.cols / QK;
    let a = ActPtrs::<N>::new(job, j0);
    // SAFETY (whole body): every pointer stays inside its row: b < nb blocks of 18 weight
    // bytes, 32 codes, 8 scales, 2 sums and 8 4-sums per activation block.
    unsafe {
        for r in rows {
            let w = job.row(r).as_ptr();
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..nb {
                let blk = w.add(b * 18);
                prefetch(blk);
                let dw = _mm256_broadcastss_ps(halves(i32::from(blk.cast::<u16>().read_unaligned())));
                let q = nibbles(blk.add(2));
                for j in 0..N {
                    let y = _mm256_loadu_si256(a.q[j].add(b * QK).cast());
                    let corr = _mm256_slli_epi32(_mm256_loadu_si256(a.nsum4[j].add(b * 8).cast()), 3);
                    let lanes = dot_u8i8::<VNNI>(corr, q, y);
                    let dd = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d8[j].add(b * 8)));
                    acc[j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes), acc[j]);
                }
            }
            for j in 0..N {
                job.store(j0 + j, r, hsum8(acc[j]));
            }
        }
    }
}

/// Q4_1 × Q8_1: d_w·d_x·Σq·y + m_w·s_x. `[d, m, 0, 0]` times the activation's `[0, s]` adds
/// m·s into lane 1 with one FMA and no shuffle.
#[inline(always)]
unsafe fn q4_1_body<const N: usize, const VNNI: bool>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let nb = job.acts.cols / QK;
    let a = ActPtrs::<N>::new(job, j0);
    // SAFETY (whole body): as in q4_0_body, with 20-byte weight blocks.
    unsafe {
        for r in rows {
            let w = job.row(r).as_ptr();
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..nb {
                let blk = w.add(b * 20);
                prefetch(blk);
                let dm = halves(blk.cast::<i32>().read_unaligned());
                let dw = _mm256_broadcastss_ps(dm);
                let dm = _mm256_zextps128_ps256(dm);
                let q = nibbles(blk.add(4));
                for j in 0..N {
                    let y = _mm256_loadu_si256(a.q[j].add(b * QK).cast());
                    let lanes = dot_u8i8::<VNNI>(_mm256_setzero_si256(), q, y);
                    let dd = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d8[j].add(b * 8)));
                    acc[j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes), acc[j]);
                    let s = _mm256_zextps128_ps256(_mm_castpd_ps(_mm_load_sd(a.s2[j].add(b * 2).cast())));
                    acc[j] = _mm256_fmadd_ps(dm, s, acc[j]);
                }
            }
            for j in 0..N {
                job.store(j0 + j, r, hsum8(acc[j]));
            }
        }
    }
}

/// Q8_0 × Q8_0. Plain AVX2 moves the weight's sign onto the activation (`|w|·sign(y, w)`);
/// VNNI offsets the weight by 128 instead and takes 128·Σy back lane by lane.
#[inline(always)]
unsafe fn q8_0_body<const N: usize, const VNNI: bool>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let nb = job.acts.cols / QK;
    let a = ActPtrs::<N>::new(job, j0);
    // SAFETY (whole body): as in q4_0_body, with 34-byte weight blocks.
    unsafe {
        for r in rows {
            let w = job.row(r).as_ptr();
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..nb {
                let blk = w.add(b * 34);
                prefetch(blk);
                let dw = _mm256_broadcastss_ps(halves(i32::from(blk.cast::<u16>().read_unaligned())));
                let wq = _mm256_loadu_si256(blk.add(2).cast());
                // Only one of these is used per variant; the other is dead code.
                let offset = _mm256_xor_si256(wq, _mm256_set1_epi8(-128));
                let magnitude = _mm256_sign_epi8(wq, wq);
                for j in 0..N {
                    let y = _mm256_loadu_si256(a.q[j].add(b * QK).cast());
                    let lanes = if VNNI {
                        let corr = _mm256_slli_epi32(_mm256_loadu_si256(a.nsum4[j].add(b * 8).cast()), 7);
                        dot_u8i8::<VNNI>(corr, offset, y)
                    } else {
                        dot_u8i8::<VNNI>(_mm256_setzero_si256(), magnitude, _mm256_sign_epi8(y, wq))
                    };
                    let dd = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d8[j].add(b * 8)));
                    acc[j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes), acc[j]);
                }
            }
            for j in 0..N {
                job.store(j0 + j, r, hsum8(acc[j]));
            }
        }
    }
}

/// K-quants: the portable integer loops, auto-vectorised for AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kquants_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    // SAFETY: forwarded.
    unsafe { portable::kquant_rows::<N>(job, rows, j0) }
}

/// 8 weights at `p` (index `i` of the row) as f32.
#[inline(always)]
unsafe fn load8(dtype: GgmlType, p: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller keeps i + 8 ≤ cols.
    unsafe {
        match dtype {
            GgmlType::F32 => _mm256_loadu_ps(p.add(4 * i).cast()),
            GgmlType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i).cast())),
            // bf16 is the top half of an f32.
            _ => {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i).cast())), 16))
            }
        }
    }
}

/// F32 / F16 / BF16 rows in f32: two 8-lane accumulators per activation row (16 values a
/// step), then 8 at a time, then the last < 8 values in scalar order.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn floats_tile<const N: usize>(job: &Job<'_>, rows: Range<usize>, j0: usize) {
    let dtype = job.w.dtype;
    let cols = job.acts.cols;
    let width = if dtype == GgmlType::F32 { 4 } else { 2 };
    let x: [*const f32; N] = std::array::from_fn(|j| job.acts.x_row(j0 + j).as_ptr());
    // SAFETY (whole body): indices stay below cols in every row.
    unsafe {
        for r in rows {
            let row = job.row(r);
            let w = row.as_ptr();
            let mut acc0 = [_mm256_setzero_ps(); N];
            let mut acc1 = [_mm256_setzero_ps(); N];
            let mut i = 0;
            while i + 16 <= cols {
                prefetch(w.add(i * width));
                let (w0, w1) = (load8(dtype, w, i), load8(dtype, w, i + 8));
                for j in 0..N {
                    acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[j].add(i)), acc0[j]);
                    acc1[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[j].add(i + 8)), acc1[j]);
                }
                i += 16;
            }
            if i + 8 <= cols {
                let w0 = load8(dtype, w, i);
                for j in 0..N {
                    acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[j].add(i)), acc0[j]);
                }
                i += 8;
            }
            for j in 0..N {
                let mut sum = hsum8(_mm256_add_ps(acc0[j], acc1[j]));
                for k in i..cols {
                    sum += super::float_at(dtype, row, k) * *x[j].add(k);
                }
                job.store(j0 + j, r, sum);
            }
        }
    }
}
