//! Products on random blocks of every type, checked against `x · dequantize(W)ᵀ` in f32, across
//! instruction sets, and for the batch/thread invariance the model relies on.

use half::{bf16, f16};

use super::super::quant::{dequantize, GgmlType};
use super::*;

const ALL: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// xorshift64*: reproducible test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

fn half(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// One random block of `dtype`: random code bytes and sane scales (so that values are O(1)
/// and no block is all-zero).
fn random_block(dtype: GgmlType, rng: &mut Rng, out: &mut Vec<u8>) {
    let layout = dtype.block_layout().unwrap();
    let start = out.len();
    match dtype {
        GgmlType::F32 => out.extend(rng.uniform(-1.0, 1.0).to_le_bytes()),
        GgmlType::F16 => out.extend(half(rng.uniform(-1.0, 1.0))),
        GgmlType::BF16 => out.extend(bf16::from_f32(rng.uniform(-1.0, 1.0)).to_bits().to_le_bytes()),
        GgmlType::Q8_0 => {
            out.extend(half(rng.uniform(0.002, 0.01)));
            out.extend((0..32).map(|_| rng.byte()));
        }
        GgmlType::Q4_0 => {
            out.extend(half(rng.uniform(0.05, 0.15)));
            out.extend((0..16).map(|_| rng.byte()));
        }
        GgmlType::Q4_1 => {
            out.extend(half(rng.uniform(0.05, 0.15)));
            out.extend(half(rng.uniform(-1.0, 0.2)));
            out.extend((0..16).map(|_| rng.byte()));
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            out.extend(half(rng.uniform(0.001, 0.004)));
            out.extend(half(rng.uniform(0.001, 0.004)));
            out.extend((0..layout.bytes - 4).map(|_| rng.byte()));
        }
        GgmlType::Q6_K => {
            out.extend((0..192).map(|_| rng.byte()));
            out.extend((0..16).map(|_| (rng.byte() % 64) as i8 as u8 ^ if rng.byte() & 1 == 0 { 0 } else { 0xC0 }));
            out.extend(half(rng.uniform(0.001, 0.004)));
        }
        other => panic!("no generator for {other}"),
    }
    assert_eq!(out.len() - start, layout.bytes);
}

fn random_matrix(dtype: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QuantMatrix {
    let values = dtype.block_layout().unwrap().values;
    let mut data = Vec::new();
    for _ in 0..rows * cols / values {
        random_block(dtype, rng, &mut data);
    }
    QuantMatrix::new(dtype, rows, cols, data).unwrap()
}

fn random_x(t: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    (0..t * cols).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn pool(threads: usize) -> Threads {
    Threads::new(threads).unwrap()
}

fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.available()).collect()
}

/// `x · Wᵀ` in f32 over the dequantised weights, and `Σ|w_i·x_i|` per output (the scale
/// errors are measured against).
fn reference(w: &QuantMatrix, x: &[f32], t: usize) -> (Vec<f32>, Vec<f32>) {
    let dense = dequantize(w.dtype(), &w.data, w.rows() * w.cols()).unwrap();
    let (mut y, mut mag) = (Vec::new(), Vec::new());
    for j in 0..t {
        let xr = &x[j * w.cols()..(j + 1) * w.cols()];
        for r in 0..w.rows() {
            let wr = &dense[r * w.cols()..(r + 1) * w.cols()];
            y.push(wr.iter().zip(xr).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() as f32);
            mag.push(wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum());
        }
    }
    (y, mag)
}

fn product(isa: Isa, w: &QuantMatrix, x: &[f32], t: usize, threads: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; t * w.rows()];
    matmul_with(isa, w, x, t, &mut out, &pool(threads));
    out
}

fn shapes(dtype: GgmlType) -> Vec<(usize, usize)> {
    match dtype.block_layout().unwrap().values {
        256 => vec![(40, 512), (9, 256)],
        32 => vec![(40, 512), (40, 96), (7, 32)],
        // Plain floats: also lengths that leave vector tails.
        _ => vec![(40, 512), (40, 96), (5, 37)],
    }
}

/// The 8-bit activations cost at most half a step, amax/254, per value; with activations
/// uniform in [−1, 1] the mean |x| is 0.5, so the error stays below about 1/127 of Σ|w·x|.
/// 0.02 leaves room for the f16-rounded activation scales and for unlucky rows. Float weights
/// see only f32 rounding.
#[test]
fn every_type_and_isa_matches_the_f32_reference() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for dtype in ALL {
        let float = matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let tol = if float { 1e-5 } else { 0.02 };
        for (rows, cols) in shapes(dtype) {
            let w = random_matrix(dtype, rows, cols, &mut rng);
            for t in [1, 3, 17] {
                let x = random_x(t, cols, &mut rng);
                let (want, mag) = reference(&w, &x, t);
                let portable = product(Isa::Portable, &w, &x, t, 2);
                for isa in isas() {
                    let got = product(isa, &w, &x, t, 2);
                    for i in 0..got.len() {
                        let bound = tol * mag[i] + 1e-4;
                        assert!(
                            (got[i] - want[i]).abs() <= bound,
                            "{dtype} {isa:?} {rows}x{cols} t={t} [{i}]: {} vs {} (bound {bound})",
                            got[i],
                            want[i]
                        );
                        // Same codes, other summation order: only f32 rounding apart.
                        let bound = 1e-4 * mag[i] + 1e-6;
                        assert!(
                            (got[i] - portable[i]).abs() <= bound,
                            "{dtype} {isa:?} vs portable {rows}x{cols} t={t} [{i}]: {} vs {}",
                            got[i],
                            portable[i]
                        );
                    }
                }
            }
        }
    }
}

/// K-quants sum their blocks in scalar f32 in the same order on every ISA (only the integer
/// part is vectorised), so all ISAs agree exactly.
#[test]
fn k_quants_agree_bitwise_across_isas() {
    let mut rng = Rng(7);
    for dtype in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let w = random_matrix(dtype, 24, 512, &mut rng);
        let x = random_x(6, 512, &mut rng);
        let portable = product(Isa::Portable, &w, &x, 6, 1);
        for isa in isas() {
            assert_eq!(product(isa, &w, &x, 6, 2), portable, "{dtype} {isa:?}");
        }
    }
}

/// A batch of 5 in one call equals, bitwise, the same rows computed as 2 + 3 and with 1 or 2
/// threads: a row's value never depends on its batch, tile or thread.
#[test]
fn results_do_not_depend_on_batch_or_threads() {
    let mut rng = Rng(42);
    for dtype in ALL {
        let cols = if dtype.block_layout().unwrap().values == 256 { 512 } else { 96 };
        let w = random_matrix(dtype, 40, cols, &mut rng);
        let x = random_x(5, cols, &mut rng);
        for isa in isas() {
            let whole = product(isa, &w, &x, 5, 2);
            let first = product(isa, &w, &x[..2 * cols], 2, 2);
            let rest = product(isa, &w, &x[2 * cols..], 3, 2);
            let split: Vec<f32> = first.into_iter().chain(rest).collect();
            assert_eq!(whole, split, "{dtype} {isa:?}: batch split");
            assert_eq!(whole, product(isa, &w, &x, 5, 1), "{dtype} {isa:?}: threads");
            let single: Vec<f32> = (0..5).flat_map(|j| product(isa, &w, &x[j * cols..(j + 1) * cols], 1, 2)).collect();
            assert_eq!(whole, single, "{dtype} {isa:?}: one row at a time");
        }
    }
}

/// Enough rows and activation rows that the batch path tiles both (16-row weight tiles,
/// 4-row activation tiles with a remainder, several chunks per thread).
#[test]
fn tiled_batches_match_row_by_row() {
    let mut rng = Rng(3);
    for dtype in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::F16, GgmlType::Q6_K] {
        let cols = if dtype.block_layout().unwrap().values == 256 { 256 } else { 576 };
        let w = random_matrix(dtype, 100, cols, &mut rng);
        let t = 11;
        let x = random_x(t, cols, &mut rng);
        for isa in isas() {
            let whole = product(isa, &w, &x, t, 2);
            for j in [0, 4, 10] {
                let one = product(isa, &w, &x[j * cols..(j + 1) * cols], 1, 2);
                assert_eq!(&whole[j * 100..(j + 1) * 100], &one[..], "{dtype} {isa:?} row {j}");
            }
        }
    }
}

/// With AVX-VNNI or without, the AVX2 kernels compute the same integer lanes and so the same
/// results.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_with_and_without_vnni_agree_bitwise() {
    if !Isa::Avx2.available() || !cpu().avx_vnni {
        eprintln!("skipped: no AVX-VNNI on this CPU");
        return;
    }
    let mut rng = Rng(11);
    for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let w = random_matrix(dtype, 33, 160, &mut rng);
        let x = random_x(6, 160, &mut rng);
        let mut a = vec![0.0; 6 * 33];
        let mut b = vec![0.0; 6 * 33];
        run(avx2::kernel(dtype, false), &w, &x, 6, &mut a, &pool(2));
        run(avx2::kernel(dtype, true), &w, &x, 6, &mut b, &pool(2));
        assert_eq!(a, b, "{dtype}");
    }
}

/// Weights and activations whose 8-bit forms are exact (integer codes, unit scales, each
/// activation block reaching ±127 so its scale is 1): every ISA must give Σ w·x exactly.
#[test]
fn exact_integer_case_is_exact() {
    let mut rng = Rng(5);
    let (rows, cols, t) = (20, 256, 2);
    let mut x = Vec::new();
    for _ in 0..t * cols / 32 {
        // Small values plus one ±127 per block: the scale is 127/127 = 1 and Σq stays well
        // inside f16's exact integers (the Q8_1 sum is stored as f16).
        let mut block: Vec<f32> = (0..32).map(|_| (rng.byte() % 41) as f32 - 20.0).collect();
        block[(rng.byte() % 32) as usize] = if rng.byte() & 1 == 0 { 127.0 } else { -127.0 };
        x.extend(block);
    }
    let mut make = |dtype: GgmlType| {
        let mut data = Vec::new();
        for _ in 0..rows * cols / 32 {
            match dtype {
                GgmlType::Q8_0 => {
                    data.extend(half(1.0));
                    data.extend((0..32).map(|_| rng.byte().max(0x81)));
                }
                GgmlType::Q4_0 => {
                    data.extend(half(1.0));
                    data.extend((0..16).map(|_| rng.byte()));
                }
                _ => {
                    // Q4_1 with m = −8 gives the same values as Q4_0.
                    data.extend(half(1.0));
                    data.extend(half(-8.0));
                    data.extend((0..16).map(|_| rng.byte()));
                }
            }
        }
        QuantMatrix::new(dtype, rows, cols, data).unwrap()
    };
    for dtype in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let w = make(dtype);
        let (want, _) = reference(&w, &x, t);
        for isa in isas() {
            assert_eq!(product(isa, &w, &x, t, 2), want, "{dtype} {isa:?}");
        }
    }
}

#[test]
fn permute_stack_and_row_lookup_match_dequantize() {
    let mut rng = Rng(9);
    for dtype in ALL {
        let cols = dtype.block_layout().unwrap().values.max(32) * 2;
        let a = random_matrix(dtype, 5, cols, &mut rng);
        let b = random_matrix(dtype, 3, cols, &mut rng);
        let dense = |m: &QuantMatrix| dequantize(m.dtype(), &m.data, m.rows() * m.cols()).unwrap();
        let (da, db) = (dense(&a), dense(&b));

        let p = a.permute_rows(&[4, 0, 2, 2]);
        assert_eq!(p.rows(), 4);
        let dp = dense(&p);
        for (i, &r) in [4, 0, 2, 2].iter().enumerate() {
            assert_eq!(dp[i * cols..(i + 1) * cols], da[r * cols..(r + 1) * cols], "{dtype} permute");
        }

        let s = QuantMatrix::stack(&[a.clone(), b.clone()]).unwrap();
        assert_eq!((s.rows(), s.byte_len()), (8, a.byte_len() + b.byte_len()));
        assert_eq!(dense(&s), [da.clone(), db].concat(), "{dtype} stack");

        let mut row = vec![0.0; cols];
        a.dequantize_row(3, &mut row);
        assert_eq!(row, da[3 * cols..4 * cols], "{dtype} row");
    }
    let mut rng = Rng(1);
    let q8 = random_matrix(GgmlType::Q8_0, 2, 64, &mut rng);
    let q4 = random_matrix(GgmlType::Q4_0, 2, 64, &mut rng);
    let narrow = random_matrix(GgmlType::Q8_0, 2, 32, &mut rng);
    assert!(QuantMatrix::stack(&[q8.clone(), q4]).is_none());
    assert!(QuantMatrix::stack(&[q8, narrow]).is_none());
    assert!(QuantMatrix::stack(&[]).is_none());
}

#[test]
fn constructor_checks_type_and_length() {
    assert_eq!(
        QuantMatrix::new(GgmlType::Q5_0, 1, 32, vec![0; 22]).unwrap_err(),
        QuantError::Unsupported(GgmlType::Q5_0)
    );
    assert!(matches!(QuantMatrix::new(GgmlType::Q8_0, 1, 48, vec![0; 51]), Err(QuantError::PartialBlock { .. })));
    assert!(matches!(
        QuantMatrix::new(GgmlType::Q8_0, 2, 32, vec![0; 34]),
        Err(QuantError::ByteLength { expected: 68, actual: 34, .. })
    ));
    let m = QuantMatrix::new(GgmlType::Q4_1, 3, 64, vec![0; 120]).unwrap();
    assert_eq!((m.dtype(), m.rows(), m.cols(), m.byte_len()), (GgmlType::Q4_1, 3, 64, 120));
}

/// ggml's x86 Q8_0 quantisation: scale amax/127 stored as f16, codes rounded half to even.
#[test]
fn activation_codes_follow_ggml() {
    let mut x = vec![0.0f32; 32];
    x[0] = 2.54; // amax: code 127
    x[1] = 0.01; // 0.01 · 127/2.54 = 0.5 → ties to even: 0
    x[2] = 0.03; // 1.5 → 2
    x[3] = -0.03; // −1.5 → −2
    let acts = activations::Acts::new(GgmlType::Q8_0, &x, 1, 32);
    assert_eq!(&acts.qs[..4], &[127, 0, 2, -2]);
    assert_eq!(acts.d8[0], f16::from_f32(2.54 / 127.0).to_f32());
    assert_eq!(acts.nsum4[0], -(127 + 2 - 2));
    assert_eq!(acts.s2[1], f16::from_f32(2.54 / 127.0 * 127.0).to_f32());

    // Q8_K: the signed extreme sets the scale −127/max; a positive extreme flips the codes'
    // signs and makes d negative, as in ggml.
    let mut x = vec![-0.5f32; 256];
    x[7] = 1.0;
    let acts = activations::Acts::new(GgmlType::Q4_K, &x, 1, 256);
    assert_eq!(acts.qs[7], -127);
    assert_eq!(acts.qs[0], 64); // 63.5 → ties to even
    assert_eq!(acts.dk[0], 1.0 / (-127.0f32));
    assert_eq!(acts.bsums[0], -127 + 15 * 64);
}
