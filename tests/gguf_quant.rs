//! GGUF reading end to end: tensors of every supported type are built by hand from chosen
//! numbers, written with `GgufWriter`, read back with `GgufFile::open` and dequantised; the
//! expected values are computed here from the documented block formulas, packing the blocks
//! from the quantised numbers (the direction the library never implements), so a misreading
//! of a layout by the reader cannot be mirrored by the test. Then damaged files, and the real
//! SmolLM2 model checked against facts and values from an independent reader (gguf-py).

use std::path::{Path, PathBuf};
use std::time::Instant;

use engram::model::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, QuantError};
use half::f16;

/// A small deterministic generator, so the fixtures vary every nibble and bit position
/// without depending on a random-number crate's algorithm.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

/// f16 bytes of `v`, which the fixtures choose to be exactly representable so that the
/// expected values carry no rounding of their own.
fn half(v: f32) -> [u8; 2] {
    let h = f16::from_f32(v);
    assert_eq!(h.to_f32(), v, "fixture value {v} is not exact in f16");
    h.to_bits().to_le_bytes()
}

/// Writes one tensor, reads it back and dequantises it; checks the reported shape on the way.
fn round_trip(dtype: GgmlType, dims: &[u64], bytes: Vec<u8>) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let mut w = GgufWriter::new();
    // A small tensor first, so the tested one sits at a non-zero offset in the data section.
    w.add_f32_tensor("lead", &[3], &[7.0, 8.0, 9.0]).add_tensor("t", dims, dtype, bytes.clone());
    w.write(&path).unwrap();

    let f = GgufFile::open(&path).unwrap();
    let info = f.tensor("t").unwrap();
    assert_eq!(info.dtype, dtype);
    assert_eq!(info.dims, dims);
    assert_ne!(info.offset, 0);
    assert_eq!(f.tensor_bytes("t").unwrap(), bytes.as_slice());
    let (shape, values) = f.dequantize("t").unwrap();
    let row_major: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
    assert_eq!(shape, row_major);
    assert_eq!(f.dequantize("lead").unwrap().1, vec![7.0, 8.0, 9.0]);
    values
}

fn assert_values(dtype: GgmlType, actual: &[f32], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{dtype}: value count");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let tolerance = 1e-6 * e.abs().max(1.0);
        assert!((f64::from(a) - e).abs() <= tolerance, "{dtype}: value {i} is {a}, expected {e}");
    }
}

#[test]
fn f32_round_trip() {
    let values = [1.0f32, -2.5, 3.25e-7, 6.5e4, 0.0, -0.0, 123.456, -1e30];
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let out = round_trip(GgmlType::F32, &[4, 2], bytes);
    assert_eq!(out, values);
}

#[test]
fn f16_round_trip() {
    // Hand-written bit patterns: 1.0, -2.0, 65504 (largest), 2^-24 (smallest subnormal),
    // 0.333251953125, -0.0.
    let bits: [u16; 6] = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3555, 0x8000];
    let expected = [1.0, -2.0, 65504.0, 2f64.powi(-24), 0.333251953125, -0.0];
    let bytes = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let out = round_trip(GgmlType::F16, &[3, 2], bytes);
    assert_values(GgmlType::F16, &out, &expected);
}

#[test]
fn bf16_round_trip() {
    // bf16 keeps the top 16 bits of an f32: 0x3FC0 = 1.5, 0xC0A0 = -5.0, 0x3DC0 = 0.09375,
    // 0x4780 = 65536.
    let bits: [u16; 4] = [0x3FC0, 0xC0A0, 0x3DC0, 0x4780];
    let bytes = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let out = round_trip(GgmlType::BF16, &[4], bytes);
    assert_values(GgmlType::BF16, &out, &[1.5, -5.0, 0.09375, 65536.0]);
}

#[test]
fn q8_0_round_trip() {
    // Four blocks (two rows of two) with scales of both signs; q covers the i8 extremes.
    let scales = [0.5f32, -0.25, 2.0, 0.0078125];
    let mut rng = Lcg(8);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for (b, &d) in scales.iter().enumerate() {
        bytes.extend(half(d));
        for i in 0..32 {
            let q: i8 = match (b, i) {
                (0, 0) => -128,
                (0, 1) => 127,
                _ => rng.next() as u8 as i8,
            };
            bytes.push(q as u8);
            expected.push(f64::from(q) * f64::from(d));
        }
    }
    let out = round_trip(GgmlType::Q8_0, &[64, 2], bytes);
    assert_values(GgmlType::Q8_0, &out, &expected);
}

/// Packs 32 four-bit values the Q4_0/Q4_1 way: byte j holds value j (low nibble) and value
/// j + 16 (high nibble).
fn pack_q4_32(q: &[u8]) -> Vec<u8> {
    (0..16).map(|j| q[j] | (q[j + 16] << 4)).collect()
}

#[test]
fn q4_0_round_trip() {
    let scales = [0.5f32, -1.5, 0.125];
    let mut rng = Lcg(40);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for &d in &scales {
        let q: Vec<u8> = (0..32).map(|_| rng.below(16) as u8).collect();
        bytes.extend(half(d));
        bytes.extend(pack_q4_32(&q));
        expected.extend(q.iter().map(|&q| (f64::from(q) - 8.0) * f64::from(d)));
    }
    let out = round_trip(GgmlType::Q4_0, &[96], bytes);
    assert_values(GgmlType::Q4_0, &out, &expected);
}

#[test]
fn q4_1_round_trip() {
    let params = [(0.5f32, -1.0f32), (0.25, 3.5), (-2.0, 0.0)];
    let mut rng = Lcg(41);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for &(d, m) in &params {
        let q: Vec<u8> = (0..32).map(|_| rng.below(16) as u8).collect();
        bytes.extend(half(d));
        bytes.extend(half(m));
        bytes.extend(pack_q4_32(&q));
        expected.extend(q.iter().map(|&q| f64::from(q) * f64::from(d) + f64::from(m)));
    }
    let out = round_trip(GgmlType::Q4_1, &[32, 3], bytes);
    assert_values(GgmlType::Q4_1, &out, &expected);
}

/// Packs eight 6-bit scales and mins into the 12 bytes of a Q4_K/Q5_K block. Sub-blocks 0–3
/// sit in the low 6 bits of bytes 0–3 (scale) and 4–7 (min); sub-blocks 4–7 put their low
/// 4 bits in bytes 8–11 (scale in the low nibble, min in the high one) and their top 2 bits in
/// the top bits of bytes 0–3 (scale) and 4–7 (min).
fn pack_k_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    s
}

/// Per-block parameters of the K-quant fixtures: super-block scales, and sub-block scales and
/// mins that use all six bits (values above 15 and up to 63) in every sub-block position.
fn k_params(block: usize) -> (f32, f32, [u8; 8], [u8; 8]) {
    match block {
        0 => (0.5, 0.25, [1, 17, 63, 2, 33, 5, 48, 9], [0, 63, 16, 3, 40, 1, 22, 31]),
        1 => (-0.125, 2.0, [60, 3, 18, 45, 7, 62, 16, 31], [12, 5, 50, 0, 63, 17, 2, 44]),
        _ => (1.5, -0.5, [32, 15, 16, 47, 63, 0, 21, 58], [63, 62, 1, 33, 9, 48, 30, 15]),
    }
}

#[test]
fn q4_k_round_trip() {
    let mut rng = Lcg(412);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for b in 0..3 {
        let (d, dmin, sc, m) = k_params(b);
        let q: Vec<u8> = (0..256).map(|_| rng.below(16) as u8).collect();
        bytes.extend(half(d));
        bytes.extend(half(dmin));
        bytes.extend(pack_k_scales(&sc, &m));
        // Chunk c of 64 values: 32 bytes, low nibbles = values 64c..64c+32, high nibbles =
        // values 64c+32..64c+64.
        for c in 0..4 {
            bytes.extend((0..32).map(|l| q[64 * c + l] | (q[64 * c + 32 + l] << 4)));
        }
        for (i, &q) in q.iter().enumerate() {
            let j = i / 32;
            expected.push(f64::from(d) * f64::from(sc[j]) * f64::from(q) - f64::from(dmin) * f64::from(m[j]));
        }
    }
    let out = round_trip(GgmlType::Q4_K, &[256, 3], bytes);
    assert_values(GgmlType::Q4_K, &out, &expected);
}

#[test]
fn q5_k_round_trip() {
    let mut rng = Lcg(513);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for b in 0..3 {
        let (d, dmin, sc, m) = k_params(b);
        let q: Vec<u8> = (0..256).map(|_| rng.below(32) as u8).collect();
        bytes.extend(half(d));
        bytes.extend(half(dmin));
        bytes.extend(pack_k_scales(&sc, &m));
        // Fifth bits: in chunk c, bit 2c of qh[l] is value 64c + l, bit 2c + 1 is value
        // 64c + 32 + l.
        let mut qh = [0u8; 32];
        for c in 0..4 {
            for l in 0..32 {
                qh[l] |= (q[64 * c + l] >> 4) << (2 * c);
                qh[l] |= (q[64 * c + 32 + l] >> 4) << (2 * c + 1);
            }
        }
        bytes.extend(qh);
        for c in 0..4 {
            bytes.extend((0..32).map(|l| (q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4)));
        }
        for (i, &q) in q.iter().enumerate() {
            let j = i / 32;
            expected.push(f64::from(d) * f64::from(sc[j]) * f64::from(q) - f64::from(dmin) * f64::from(m[j]));
        }
    }
    let out = round_trip(GgmlType::Q5_K, &[768], bytes);
    assert_values(GgmlType::Q5_K, &out, &expected);
}

#[test]
fn q6_k_round_trip() {
    let mut rng = Lcg(614);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for (b, &d) in [0.25f32, -0.5, 0.0625].iter().enumerate() {
        let q: Vec<u8> = (0..256).map(|_| rng.below(64) as u8).collect();
        // One i8 scale per 16 values, both signs, including the extremes.
        let scales: Vec<i8> = match b {
            0 => vec![-128, 127, 1, -1, 16, -17, 33, 100, -77, 5, 0, 64, -64, 12, 99, -3],
            _ => (0..16).map(|_| rng.next() as u8 as i8).collect(),
        };
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        // Half h (values 128h..128h+128) uses ql[64h..], qh[32h..]. For l in 0..32:
        // ql[l] = low bits of values l (low nibble) and l+64 (high nibble), ql[l+32] those of
        // l+32 and l+96; qh[l] bit pairs 0-1, 2-3, 4-5, 6-7 = top bits of l, l+32, l+64, l+96.
        for h in 0..2 {
            let v = |k: usize| q[128 * h + k];
            for l in 0..32 {
                ql[64 * h + l] = (v(l) & 15) | ((v(l + 64) & 15) << 4);
                ql[64 * h + 32 + l] = (v(l + 32) & 15) | ((v(l + 96) & 15) << 4);
                qh[32 * h + l] =
                    (v(l) >> 4) | ((v(l + 32) >> 4) << 2) | ((v(l + 64) >> 4) << 4) | ((v(l + 96) >> 4) << 6);
            }
        }
        bytes.extend(ql);
        bytes.extend(qh);
        bytes.extend(scales.iter().map(|&s| s as u8));
        bytes.extend(half(d));
        for (i, &q) in q.iter().enumerate() {
            expected.push(f64::from(d) * f64::from(scales[i / 16]) * (f64::from(q) - 32.0));
        }
    }
    let out = round_trip(GgmlType::Q6_K, &[256, 3], bytes);
    assert_values(GgmlType::Q6_K, &out, &expected);
}

// ---------------------------------------------------------------------------------------------
// Damaged files

/// A valid file with two F32 tensors, "first" (4 values) and "second" (8 values).
fn two_tensor_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("llama".into()))
        .add_f32_tensor("first", &[4], &[1.0, 2.0, 3.0, 4.0])
        .add_f32_tensor("second", &[8], &[0.5; 8]);
    w.to_bytes().unwrap()
}

fn write_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_names(err: &GgufError, path: &Path, tensor: Option<&str>) {
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "message does not name the file: {message}");
    if let Some(tensor) = tensor {
        assert!(message.contains(tensor), "message does not name tensor {tensor}: {message}");
    }
}

/// Position of the data-offset field of tensor `name` in a file from `two_tensor_file`: after
/// the name's length and bytes, the dimension count, one dimension and the type.
fn offset_field(bytes: &[u8], name: &str) -> usize {
    let mut pattern = (name.len() as u64).to_le_bytes().to_vec();
    pattern.extend(name.as_bytes());
    let at = bytes.windows(pattern.len()).position(|w| w == pattern.as_slice()).unwrap();
    at + pattern.len() + 4 + 8 + 4
}

#[test]
fn wrong_magic() {
    let mut bytes = two_tensor_file();
    bytes[..4].copy_from_slice(b"GGML");
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "magic.gguf", &bytes);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(&err, GgufError::BadMagic { found, .. } if found == b"GGML"), "{err:?}");
    assert_names(&err, &path, None);
}

#[test]
fn truncated_header() {
    let bytes = two_tensor_file();
    let dir = tempfile::tempdir().unwrap();
    // 30 bytes: the fixed header (24) and part of the first key's length.
    let path = write_file(&dir, "header.gguf", &bytes[..30]);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(&err, GgufError::Truncated { start: 24, len: 30, .. }), "{err:?}");
    assert_names(&err, &path, None);

    // Cut inside the second tensor's descriptor: the error says which tensor it was reading.
    let cut = offset_field(&bytes, "second") + 3;
    let path = write_file(&dir, "descriptor.gguf", &bytes[..cut]);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(&err, GgufError::Truncated { .. }), "{err:?}");
    assert_names(&err, &path, Some("second"));
}

#[test]
fn truncated_tensor_data() {
    let bytes = two_tensor_file();
    let dir = tempfile::tempdir().unwrap();
    let full = GgufFile::open(&write_file(&dir, "full.gguf", &bytes)).unwrap();
    // "second" starts 32 bytes into the data section (after "first" and its padding) and takes
    // 32 bytes; keep only 20 of them.
    let second_start = full.data_offset() as usize + full.tensor("second").unwrap().offset as usize;
    assert_eq!(second_start, full.data_offset() as usize + 32);
    let path = write_file(&dir, "data.gguf", &bytes[..second_start + 20]);
    let err = GgufFile::open(&path).unwrap_err();
    match &err {
        GgufError::TensorOutOfBounds { name, start, end, len, .. } => {
            assert_eq!(name, "second");
            assert_eq!((*start, *end, *len), (second_start as u64, second_start as u64 + 32, second_start as u64 + 20));
        }
        other => panic!("expected TensorOutOfBounds, got {other:?}"),
    }
    assert_names(&err, &path, Some("second"));
}

#[test]
fn tensor_offset_past_the_end() {
    let mut bytes = two_tensor_file();
    let field = offset_field(&bytes, "first");
    bytes[field..field + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "offset.gguf", &bytes);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(&err, GgufError::TensorOutOfBounds { name, .. } if name == "first"), "{err:?}");
    assert_names(&err, &path, Some("first"));

    // An offset so large that adding the data section's start overflows.
    bytes[field..field + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    let path = write_file(&dir, "overflow.gguf", &bytes);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(&err, GgufError::TensorOutOfBounds { name, .. } if name == "first"), "{err:?}");

    // An offset inside the file but off the alignment grid.
    bytes[field..field + 8].copy_from_slice(&4u64.to_le_bytes());
    let path = write_file(&dir, "misaligned.gguf", &bytes);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(&err, GgufError::BadTensor { name, .. } if name == "first"), "{err:?}");
    assert_names(&err, &path, Some("first"));
}

#[test]
fn unsupported_type() {
    let mut w = GgufWriter::new();
    w.add_tensor("q5", &[32], GgmlType::Q5_0, vec![0u8; 22])
        .add_tensor("future", &[32], GgmlType::Other(99), vec![0u8; 10])
        .add_f32_tensor("fine", &[1], &[1.0]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.gguf");
    w.write(&path).unwrap();
    // The file itself is readable: only converting those tensors fails.
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_bytes("q5").unwrap().len(), 22);

    let err = f.dequantize("q5").unwrap_err();
    assert!(
        matches!(&err, GgufError::Dequantize { name, source: QuantError::Unsupported(GgmlType::Q5_0), .. } if name == "q5"),
        "{err:?}"
    );
    assert_names(&err, &path, Some("q5"));
    assert!(err.to_string().contains("Q5_0"), "{err}");

    let err = f.dequantize("future").unwrap_err();
    assert!(matches!(&err, GgufError::Dequantize { source: QuantError::Unsupported(GgmlType::Other(99)), .. }));
    assert!(err.to_string().contains("ggml type 99"), "{err}");
    assert_eq!(f.dequantize("fine").unwrap().1, vec![1.0]);
}

// ---------------------------------------------------------------------------------------------
// The real model

fn smollm2() -> GgufFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run the project set-up that installs the model files", path.display());
    GgufFile::open(&path).unwrap()
}

#[test]
fn smollm2_metadata() {
    let start = Instant::now();
    let f = smollm2();
    eprintln!("opened (header, metadata and vocabulary parsed) in {:?}", start.elapsed());
    assert_eq!(f.version(), 3);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert!(f.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));

    let start = Instant::now();
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
    let types = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    eprintln!("vocabulary views: {:?}", start.elapsed());
    assert_eq!(tokens.len(), 49152);
    assert_eq!(merges.len(), 48900);
    assert_eq!(types.len(), 49152);
    assert_eq!(types.iter().filter(|&&t| t == 3).count(), 17);
    assert_eq!((tokens[1], tokens[2]), ("<|im_start|>", "<|im_end|>"));

    assert_eq!(f.tensors().len(), 272);
    assert!(f.tensor("output.weight").is_none(), "embeddings are tied");
    let count = |t: GgmlType| f.tensors().iter().filter(|i| i.dtype == t).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));
}

/// Reference values computed with gguf-py 0.19 (`gguf.dequantize`, llama.cpp's own Python
/// reader) on the same file: the first values and the sum of each tensor.
#[test]
fn smollm2_tensors_match_an_independent_reader() {
    let f = smollm2();
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dtype, GgmlType::Q8_0);
    assert_eq!(embd.dims, vec![576, 49152]);

    let cases: [(&str, GgmlType, Vec<usize>, [f64; 4], f64); 3] = [
        (
            "token_embd.weight",
            GgmlType::Q8_0,
            vec![49152, 576],
            [-0.10654449462890625, 0.032978057861328125, 0.048198699951171875, -0.022830963134765625],
            -15353.04449415207,
        ),
        (
            "blk.0.attn_q.weight",
            GgmlType::Q4_1,
            vec![576, 576],
            [-0.0963134765625, 0.1573486328125, -0.0963134765625, -0.73046875],
            59.22322082519531,
        ),
        (
            "blk.0.attn_norm.weight",
            GgmlType::F32,
            vec![576],
            [0.01397705078125, 0.0238037109375, -0.019775390625, -0.0302734375],
            0.6129436492919922,
        ),
    ];
    for (name, dtype, shape, first, sum) in cases {
        assert_eq!(f.tensor(name).unwrap().dtype, dtype, "{name}");
        let (got_shape, values) = f.dequantize(name).unwrap();
        assert_eq!(got_shape, shape, "{name}");
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
        assert!(values.iter().all(|v| v.is_finite()), "{name} has non-finite values");
        for (i, (&v, &e)) in values.iter().zip(&first).enumerate() {
            assert_eq!(f64::from(v), e, "{name} value {i}");
        }
        let total: f64 = values.iter().map(|&v| f64::from(v)).sum();
        assert!((total - sum).abs() < 1e-6 * sum.abs().max(1.0), "{name}: sum {total}, expected {sum}");
    }
}

#[test]
fn smollm2_whole_file_dequantises() {
    let f = smollm2();
    let start = Instant::now();
    let mut values = 0usize;
    for info in f.tensors() {
        let (shape, data) = f.dequantize(&info.name).unwrap();
        assert_eq!(data.len(), shape.iter().product::<usize>(), "{}", info.name);
        values += data.len();
    }
    let elapsed = start.elapsed();
    assert_eq!(values, 134_515_008, "parameter count");
    eprintln!("dequantised {} tensors, {values} values, in {elapsed:?}", f.tensors().len());
}
