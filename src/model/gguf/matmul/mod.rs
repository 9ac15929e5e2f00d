//! Matrix products computed directly on GGUF weight blocks, on the CPU.
//!
//! The chat model's decode step multiplies one activation row by every weight matrix; at batch 1
//! that is a matrix–vector product whose cost is reading the weights. Dequantising them to f32
//! once at load time would make every token read four to eight times more bytes, so
//! [`QuantMatrix`] keeps the file's blocks and multiplies them as they are.
//!
//! # Numerics: integer dots, as ggml does
//!
//! Following ggml / llama.cpp, the activations are themselves quantised to 8 bits per block
//! before the product ([`activations`]): Q8_0 and Q4_0 weights meet Q8_0 activations (blocks
//! of 32, f16 scale amax/127), Q4_1 meets Q8_1 (Q8_0 plus the block's scaled sum, which carries
//! the weight's min term), and Q4_K, Q5_K, Q6_K meet Q8_K (blocks of 256, f32 scale, sums of
//! every 16 values). The inner loop is then an exact integer dot product of 8-bit values per
//! block (`maddubs`/`madd`, or VNNI `dpbusd`), scaled once per block in f32. This is what makes
//! the product run at memory speed, and choosing the activation scales and roundings exactly as
//! ggml does on x86 is what lets the model reproduce llama.cpp's greedy output on the same file.
//! F32, F16 and BF16 weights are multiplied in f32 against unquantised activations.
//!
//! # Determinism
//!
//! For a given [`Isa`], every output element is a pure function of its activation row and its
//! weight row: activations are quantised row by row, and each (activation row, weight row) dot
//! product runs the same instruction sequence whatever the batch size, the other rows of the
//! batch, the tile the row falls in, or the thread that computes it. A prompt evaluated in one
//! call or in several therefore gives bitwise the same numbers. Different ISAs sum the per-block
//! products in different orders and agree only to rounding; within [`Isa::Avx2`], machines with
//! and without AVX-VNNI give bitwise the same results (the integer lanes are identical).
//!
//! # Layout
//!
//! - [`activations`]: per-row quantisation of the activations (Q8_0/Q8_1 and Q8_K);
//! - [`portable`]: scalar kernels for every type, and the K-quant kernels the x86 paths reuse;
//! - `avx2` / `avx512`: hand-written kernels for Q4_0, Q4_1, Q8_0 and the float types.

/// Defines `$name(job, rows, j0, n)`, a [`Kernel`], that calls the tile kernel `$inner::<N>`
/// with N = n (1 ..= 4): each tile size is its own instantiation, whose per-row code is the
/// same as the others'.
macro_rules! tiled {
    ($(#[$meta:meta])* $name:ident => $inner:ident) => {
        $(#[$meta])*
        pub(crate) unsafe fn $name(job: &super::Job<'_>, rows: std::ops::Range<usize>, j0: usize, n: usize) {
            // SAFETY: forwarded from the caller (the `Kernel` contract).
            unsafe {
                match n {
                    1 => $inner::<1>(job, rows, j0),
                    2 => $inner::<2>(job, rows, j0),
                    3 => $inner::<3>(job, rows, j0),
                    _ => $inner::<4>(job, rows, j0),
                }
            }
        }
    };
}

mod activations;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;
#[cfg(test)]
mod tests;
mod threads;

pub use threads::Threads;

use std::ops::Range;

use half::{bf16, f16};

use super::quant::{dequantize, GgmlType, QuantError};
use activations::Acts;

/// A weight matrix of `rows` outputs × `cols` inputs kept in its GGUF encoding: row r is
/// `cols` values in the type's blocks (exactly the bytes of a GGUF 2-D tensor whose GGUF
/// dims are [cols, rows]).
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    /// Bytes of one row: `cols / block values × block bytes`.
    row_bytes: usize,
    data: Vec<u8>,
}

impl QuantMatrix {
    /// Checks the type is one this module multiplies (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
    /// Q5_K, Q6_K), that `cols` is a whole number of blocks and `data.len()` is exact.
    pub fn new(dtype: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<QuantMatrix, QuantError> {
        if !supported(dtype) {
            return Err(QuantError::Unsupported(dtype));
        }
        let layout = dtype.block_layout().ok_or(QuantError::Unsupported(dtype))?;
        if cols % layout.values != 0 {
            return Err(QuantError::PartialBlock { dtype, count: cols, block: layout.values });
        }
        let row_bytes = cols / layout.values * layout.bytes;
        let expected = row_bytes.checked_mul(rows);
        if expected != Some(data.len()) {
            return Err(QuantError::ByteLength {
                dtype,
                count: rows.saturating_mul(cols),
                expected: expected.unwrap_or(usize::MAX),
                actual: data.len(),
            });
        }
        Ok(QuantMatrix { dtype, rows, cols, row_bytes, data })
    }

    /// The weights' tensor type.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// Number of outputs (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of inputs (values per weight row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weight data (what one product reads).
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// The encoded bytes of row `r`.
    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The same matrix with its rows reordered: row i of the result is row order[i] of self.
    ///
    /// Panics if an index is out of range. `order` may repeat or omit rows; the result has
    /// `order.len()` rows.
    pub fn permute_rows(&self, order: &[usize]) -> QuantMatrix {
        let mut data = Vec::with_capacity(order.len() * self.row_bytes);
        for &r in order {
            assert!(r < self.rows, "row {r} out of range for {} rows", self.rows);
            data.extend_from_slice(self.row(r));
        }
        QuantMatrix { dtype: self.dtype, rows: order.len(), cols: self.cols, row_bytes: self.row_bytes, data }
    }

    /// The matrices' rows one after the other (same dtype and cols), or None if they differ
    /// (or `parts` is empty).
    pub fn stack(parts: &[QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.dtype != first.dtype || p.cols != first.cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Some(QuantMatrix { dtype: first.dtype, rows, cols: first.cols, row_bytes: first.row_bytes, data })
    }

    /// Row r as f32 (for embedding lookups). Panics if `r` is out of range or `out` is not
    /// `cols` long.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} out of range for {} rows", self.rows);
        assert_eq!(out.len(), self.cols, "output length must equal cols");
        // A row is a whole number of blocks, which is all `dequantize` needs.
        let values = dequantize(self.dtype, self.row(r), self.cols).expect("row length checked by new");
        out.copy_from_slice(&values);
    }

    /// out = x · selfᵀ: `x` is `t` rows of `cols` f32 values (row-major), `out` is `t` rows of
    /// `rows` values (row-major). Rows of the weight are split over the pool's threads.
    /// Panics on mismatched lengths (callers check shapes).
    pub fn matmul(&self, x: &[f32], t: usize, out: &mut [f32], pool: &Threads) {
        matmul_with(Isa::detect(), self, x, t, out, pool);
    }
}

/// Whether this module has kernels for `dtype`.
fn supported(dtype: GgmlType) -> bool {
    use GgmlType::*;
    matches!(dtype, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q4_K | Q5_K | Q6_K)
}

/// Which instruction set the kernels use; `detect()` picks the best the CPU has.
///
/// - `Avx2` needs AVX2, FMA and F16C; it uses AVX-VNNI for the integer dots when present,
///   with identical results.
/// - `Avx512` needs AVX-512 F, BW, VL and VNNI (Ice Lake, Zen 4 and later); CPUs with AVX-512
///   but no VNNI (Skylake-X) use `Avx2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports (detected once, then cached).
    pub fn detect() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| [Isa::Avx512, Isa::Avx2].into_iter().find(|isa| isa.available()).unwrap_or(Isa::Portable))
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => cpu().avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => cpu().avx512,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The CPU features the x86 kernels care about, detected once.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct CpuFeatures {
    avx2: bool,
    avx_vnni: bool,
    avx512: bool,
}

#[cfg(target_arch = "x86_64")]
fn cpu() -> CpuFeatures {
    static FEATURES: std::sync::OnceLock<CpuFeatures> = std::sync::OnceLock::new();
    *FEATURES.get_or_init(|| {
        let avx2 =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        CpuFeatures {
            avx2,
            avx_vnni: avx2 && is_x86_feature_detected!("avxvnni"),
            avx512: avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni"),
        }
    })
}

/// Same as `matmul` with a chosen instruction set (tests compare them; panics if unavailable).
pub fn matmul_with(isa: Isa, w: &QuantMatrix, x: &[f32], t: usize, out: &mut [f32], pool: &Threads) {
    let kernel = select(isa, w.dtype);
    run(kernel, w, x, t, out, pool);
}

/// A kernel: computes rows `rows` of the output for activation rows `j0 .. j0 + n` (n ≤ 4),
/// writing through `job.out`.
///
/// # Safety
/// The CPU must support the kernel's instruction set; `rows` and the activation rows must be in
/// range; no other thread may write the same output elements at the same time.
pub(crate) type Kernel = unsafe fn(job: &Job<'_>, rows: Range<usize>, j0: usize, n: usize);

/// Most activation rows one kernel call carries: four accumulators per activation row fit the
/// 16 AVX2 registers with the unpacked weights.
pub(crate) const TILE: usize = 4;

/// Everything a kernel reads, and where it writes.
pub(crate) struct Job<'a> {
    pub(crate) w: &'a QuantMatrix,
    pub(crate) acts: &'a Acts<'a>,
    pub(crate) out: OutPtr,
}

impl Job<'_> {
    /// Encoded bytes of weight row `r`.
    #[inline(always)]
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        self.w.row(r)
    }

    /// Stores the result for activation row `j`, weight row `r`.
    ///
    /// # Safety
    /// `j < t`, `r < rows`, and no other thread writes element (j, r) concurrently.
    #[inline(always)]
    pub(crate) unsafe fn store(&self, j: usize, r: usize, v: f32) {
        debug_assert!(j < self.acts.t && r < self.w.rows);
        // SAFETY: in bounds by the caller's contract (the buffer is t × rows, checked in `run`).
        unsafe { *self.out.0.add(j * self.w.rows + r) = v };
    }
}

/// The output buffer as a raw pointer that threads may share.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(*mut f32);

// SAFETY: `run` hands each thread a disjoint range of weight rows, and a kernel only writes
// output elements (j, r) with r in its own range, so no element is written by two threads; the
// buffer outlives the parallel section (it is borrowed mutably for the whole of `run`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The kernel for `dtype` under `isa`. Panics if the CPU lacks `isa`.
fn select(isa: Isa, dtype: GgmlType) -> Kernel {
    assert!(isa.available(), "instruction set {isa:?} is not available on this CPU");
    match isa {
        Isa::Portable => portable::kernel(dtype),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::kernel(dtype, cpu().avx_vnni),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::kernel(dtype),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("checked by available()"),
    }
}

/// Quantises the activations once, then splits the weight rows over the pool.
fn run(kernel: Kernel, w: &QuantMatrix, x: &[f32], t: usize, out: &mut [f32], pool: &Threads) {
    assert_eq!(x.len(), t * w.cols, "x must be t × cols");
    assert_eq!(out.len(), t * w.rows, "out must be t × rows");
    if t == 0 || w.rows == 0 {
        return;
    }
    let acts = Acts::new(w.dtype, x, t, w.cols);
    let job = Job { w, acts: &acts, out: OutPtr(out.as_mut_ptr()) };
    let threads = pool.count();
    let chunks = split_rows(w.rows, threads);
    if threads == 1 || chunks.len() == 1 {
        for range in chunks {
            run_chunk(kernel, &job, range);
        }
        return;
    }
    // One contiguous chunk per thread: the split is static, so no thread waits on a queue.
    pool.run(&|share| {
        for range in chunks.iter().skip(share).step_by(threads) {
            run_chunk(kernel, &job, range.clone());
        }
    });
}

/// Weight rows of one tile when the batch is tiled: 16 rows of the largest SmolLM2 matrix are
/// about 15 KB, which stay in L1 while every activation tile passes over them.
const ROW_TILE: usize = 16;

/// Computes output rows `rows` for every activation row. For a batch, a tile of weight rows is
/// kept in cache while the activation rows pass over it four at a time; every (activation row,
/// weight row) pair still runs the same kernel code, so tiling cannot change a value.
fn run_chunk(kernel: Kernel, job: &Job<'_>, rows: Range<usize>) {
    let t = job.acts.t;
    if t <= TILE {
        // SAFETY: `select` checked the CPU; `rows` is this chunk's (disjoint) range.
        unsafe { kernel(job, rows, 0, t) };
        return;
    }
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + ROW_TILE).min(rows.end);
        let mut j0 = 0;
        while j0 < t {
            let n = (t - j0).min(TILE);
            // SAFETY: as above; r0..r1 lies within this chunk's rows.
            unsafe { kernel(job, r0..r1, j0, n) };
            j0 += n;
        }
        r0 = r1;
    }
}

/// Splits `rows` into one contiguous chunk per thread (fewer when the matrix is small),
/// boundaries on multiples of 16 rows.
fn split_rows(rows: usize, threads: usize) -> Vec<Range<usize>> {
    let per = rows.div_ceil(threads).next_multiple_of(ROW_TILE).max(ROW_TILE);
    (0..rows).step_by(per).map(|s| s..(s + per).min(rows)).collect()
}

/// Value `i` of a row of plain floats, for the scalar paths.
#[inline(always)]
pub(crate) fn float_at(dtype: GgmlType, row: &[u8], i: usize) -> f32 {
    match dtype {
        GgmlType::F32 => f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
        GgmlType::F16 => f16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32(),
        _ => bf16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32(),
    }
}

/// The f16 at byte `at` of `b`, as f32.
#[inline(always)]
pub(crate) fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}
