//! ggml's tensor types and their conversion to `f32`.
//!
//! Quantised types store values in fixed-size blocks that carry their own scale(s). The layouts
//! below follow ggml (`ggml-common.h`, `ggml-quants.c`); every multi-byte field is
//! little-endian and `f16` means IEEE half precision.
//!
//! | type | values | bytes | layout |
//! |------|--------|-------|--------|
//! | Q8_0 | 32 | 34 | f16 d, 32 × i8 q; v = q·d |
//! | Q4_0 | 32 | 18 | f16 d, 16 nibble bytes; v = (q − 8)·d |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 16 nibble bytes; v = q·d + m |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 nibble bytes |
//! | Q5_K | 256 | 176 | as Q4_K plus 32 bytes of fifth bits before the nibbles |
//! | Q6_K | 256 | 210 | 128 bytes low nibbles, 64 bytes high bit pairs, 16 × i8 scales, f16 d |
//!
//! In Q4_0/Q4_1, byte `j` holds value `j` in its low nibble and value `j + 16` in its high
//! nibble. The K-quants split a block into sub-blocks with their own scale (and min); the
//! per-type functions below say how.
//!
//! Conversion runs at every start of the chat model (about 135 M values), so it is written as
//! tight per-block loops, and large tensors are split across threads.

use std::fmt;

use half::{bf16, f16};

/// A ggml tensor type, by its id in the file.
///
/// Types this crate never needs to decode are still named so that errors can say which one a
/// file used; ids without a name here are kept as [`GgmlType::Other`].
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    /// Any other id (Q8_1, the IQ types, integer types, ids from newer ggml versions).
    Other(u32),
}

/// The shape of a type's storage: how many values one block holds and how many bytes it takes.
/// Plain floats are blocks of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    pub values: usize,
    pub bytes: usize,
}

const QK_K: usize = 256;

impl GgmlType {
    /// The type with ggml id `id` (the `ggml_type` enum).
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The ggml id, as written in a file.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// The block layout, for the types whose size this crate knows; `None` for
    /// [`GgmlType::Other`], whose tensors therefore cannot be sized.
    pub fn block_layout(self) -> Option<BlockLayout> {
        let (values, bytes) = match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2_K => (QK_K, 84),
            GgmlType::Q3_K => (QK_K, 110),
            GgmlType::Q4_K => (QK_K, 144),
            GgmlType::Q5_K => (QK_K, 176),
            GgmlType::Q6_K => (QK_K, 210),
            // f32 scale, 256 × i8, 16 × i16 block sums.
            GgmlType::Q8_K => (QK_K, 292),
            GgmlType::Other(_) => return None,
        };
        Some(BlockLayout { values, bytes })
    }

    /// Bytes taken by `n` values, or `None` when the type's layout is unknown, `n` is not a whole
    /// number of blocks, or the size overflows.
    pub fn byte_size(self, n: u64) -> Option<u64> {
        let layout = self.block_layout()?;
        let values = layout.values as u64;
        if n % values != 0 {
            return None;
        }
        (n / values).checked_mul(layout.bytes as u64)
    }

    /// Whether [`dequantize`] can convert this type.
    pub fn can_dequantize(self) -> bool {
        kernel_for(self).is_some()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::Other(id) => return write!(f, "ggml type {id}"),
        };
        f.write_str(name)
    }
}

/// Why a buffer could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error(
        "tensor type {0} cannot be converted to f32 (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)"
    )]
    Unsupported(GgmlType),
    #[error("{count} values of {dtype} do not make whole blocks of {block}")]
    PartialBlock { dtype: GgmlType, count: usize, block: usize },
    #[error("{count} values of {dtype} take {expected} bytes, but {actual} were given")]
    ByteLength { dtype: GgmlType, count: usize, expected: usize, actual: usize },
}

/// Converts `n` values of type `dtype`, stored in `bytes`, to `f32`.
///
/// `bytes` must hold exactly the blocks of the `n` values.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    // Checked before allocating, so that a bad length cannot cost a large allocation.
    check(dtype, bytes, n)?;
    let mut out = vec![0.0f32; n];
    dequantize_into(dtype, bytes, &mut out)?;
    Ok(out)
}

/// Converts `out.len()` values of type `dtype`, stored in `bytes`, into `out`; for callers that
/// own the destination (e.g. a tensor's storage).
pub fn dequantize_into(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let (layout, kernel) = check(dtype, bytes, out.len())?;
    run_parallel(bytes, out, layout, kernel);
    Ok(())
}

/// A conversion of whole blocks: `src` holds k blocks and `dst` their k·values outputs.
type Kernel = fn(&[u8], &mut [f32]);

fn kernel_for(dtype: GgmlType) -> Option<Kernel> {
    Some(match dtype {
        GgmlType::F32 => convert_f32,
        GgmlType::F16 => convert_f16,
        GgmlType::BF16 => convert_bf16,
        GgmlType::Q8_0 => convert_q8_0,
        GgmlType::Q4_0 => convert_q4_0,
        GgmlType::Q4_1 => convert_q4_1,
        GgmlType::Q4_K => convert_q4_k,
        GgmlType::Q5_K => convert_q5_k,
        GgmlType::Q6_K => convert_q6_k,
        _ => return None,
    })
}

fn check(dtype: GgmlType, bytes: &[u8], n: usize) -> Result<(BlockLayout, Kernel), QuantError> {
    let (Some(layout), Some(kernel)) = (dtype.block_layout(), kernel_for(dtype)) else {
        return Err(QuantError::Unsupported(dtype));
    };
    if n % layout.values != 0 {
        return Err(QuantError::PartialBlock { dtype, count: n, block: layout.values });
    }
    let expected = (n / layout.values).checked_mul(layout.bytes);
    if expected != Some(bytes.len()) {
        return Err(QuantError::ByteLength {
            dtype,
            count: n,
            expected: expected.unwrap_or(usize::MAX),
            actual: bytes.len(),
        });
    }
    Ok((layout, kernel))
}

/// Below this many values a tensor is converted on the calling thread: spawning costs more
/// than it saves.
const PARALLEL_MIN_VALUES: usize = 1 << 20;

/// Splits the blocks into one contiguous run per thread. Blocks are independent, so the split
/// only has to respect block boundaries.
fn run_parallel(src: &[u8], dst: &mut [f32], layout: BlockLayout, kernel: Kernel) {
    let threads = if dst.len() < PARALLEL_MIN_VALUES {
        1
    } else {
        // Each thread gets at least a quarter of the threshold, so mid-sized tensors use only
        // a few threads.
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        available.min(dst.len() / (PARALLEL_MIN_VALUES / 4)).max(1)
    };
    if threads == 1 {
        kernel(src, dst);
        return;
    }
    let blocks = dst.len() / layout.values;
    let per_thread = blocks.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = src.chunks(per_thread * layout.bytes).zip(dst.chunks_mut(per_thread * layout.values));
        // The calling thread takes the first part instead of idling in the join.
        let first = parts.next();
        for (s, d) in parts {
            scope.spawn(move || kernel(s, d));
        }
        if let Some((s, d)) = first {
            kernel(s, d);
        }
    });
}

#[inline(always)]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn convert_f32(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn convert_f16(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

fn convert_bf16(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

fn convert_q8_0(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = half_at(block, 0);
        for (o, &q) in out.iter_mut().zip(&block[2..34]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

fn convert_q4_0(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = half_at(block, 0);
        let (low, high) = out.split_at_mut(16);
        for ((l, h), &q) in low.iter_mut().zip(high.iter_mut()).zip(&block[2..18]) {
            *l = (i32::from(q & 0x0F) - 8) as f32 * d;
            *h = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

fn convert_q4_1(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        let d = half_at(block, 0);
        let m = half_at(block, 2);
        let (low, high) = out.split_at_mut(16);
        for ((l, h), &q) in low.iter_mut().zip(high.iter_mut()).zip(&block[4..20]) {
            *l = f32::from(q & 0x0F) * d + m;
            *h = f32::from(q >> 4) * d + m;
        }
    }
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block, each 6 bits, packed in 12 bytes:
/// sub-blocks 0–3 use the low 6 bits of bytes 0–3 (scales) and 4–7 (mins); sub-blocks 4–7 take
/// their low 4 bits from the nibbles of bytes 8–11 and their top 2 bits from the spare top bits
/// of bytes 0–7.
#[inline(always)]
pub(crate) fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K: each 64-value chunk `c` reads 32 bytes of nibbles; the low nibbles are sub-block `2c`,
/// the high nibbles sub-block `2c + 1`; value = d·scale·q − dmin·min.
fn convert_q4_k(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let d = half_at(block, 0);
        let dmin = half_at(block, 2);
        let scales = &block[4..16];
        let qs = &block[16..144];
        for (c, (q, o)) in qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = k_scale_min(scales, 2 * c);
            let (sc2, m2) = k_scale_min(scales, 2 * c + 1);
            let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let (low, high) = o.split_at_mut(32);
            for ((l, h), &b) in low.iter_mut().zip(high.iter_mut()).zip(q) {
                *l = d1 * f32::from(b & 0x0F) - min1;
                *h = d2 * f32::from(b >> 4) - min2;
            }
        }
    }
}

/// Q5_K: as Q4_K, plus a fifth bit per value from the 32 `qh` bytes: in chunk `c`, bit `2c` of
/// `qh[l]` belongs to the low-nibble value `l` and bit `2c + 1` to the high-nibble value.
fn convert_q5_k(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let d = half_at(block, 0);
        let dmin = half_at(block, 2);
        let scales = &block[4..16];
        let qh = &block[16..48];
        let qs = &block[48..176];
        for (c, (q, o)) in qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = k_scale_min(scales, 2 * c);
            let (sc2, m2) = k_scale_min(scales, 2 * c + 1);
            let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let (shift_low, shift_high) = (2 * c, 2 * c + 1);
            let (low, high) = o.split_at_mut(32);
            for (((l, h), &b), &hb) in low.iter_mut().zip(high.iter_mut()).zip(q).zip(qh) {
                let q_low = (b & 0x0F) | (((hb >> shift_low) & 1) << 4);
                let q_high = (b >> 4) | (((hb >> shift_high) & 1) << 4);
                *l = d1 * f32::from(q_low) - min1;
                *h = d2 * f32::from(q_high) - min2;
            }
        }
    }
}

/// Q6_K: each 128-value half `h` uses `ql[64h..64h+64]`, `qh[32h..32h+32]` and
/// `scales[8h..8h+8]`. For `l` in 0..32 the four values `l`, `l+32`, `l+64`, `l+96` of the half
/// take their low 4 bits from the low nibble of `ql[l]`, the low nibble of `ql[l+32]`, the high
/// nibble of `ql[l]` and the high nibble of `ql[l+32]`, and their top 2 bits from bits 0–1,
/// 2–3, 4–5 and 6–7 of `qh[l]`. Each run of 16 values has its own i8 scale; value =
/// d·scale·(q − 32).
fn convert_q6_k(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let d = half_at(block, 208);
        for part in 0..2 {
            let ql = &block[64 * part..64 * part + 64];
            let qh = &block[128 + 32 * part..128 + 32 * part + 32];
            let sc = &block[192 + 8 * part..192 + 8 * part + 8];
            let o = &mut out[128 * part..128 * part + 128];
            for l in 0..32 {
                let is = l / 16;
                let h = qh[l];
                let q1 = i32::from((ql[l] & 0x0F) | ((h & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
                o[l] = d * f32::from(sc[is] as i8) * q1 as f32;
                o[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
                o[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
                o[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn ids_round_trip_and_match_ggml() {
        let known = [
            (GgmlType::F32, 0),
            (GgmlType::F16, 1),
            (GgmlType::Q4_0, 2),
            (GgmlType::Q4_1, 3),
            (GgmlType::Q5_0, 6),
            (GgmlType::Q5_1, 7),
            (GgmlType::Q8_0, 8),
            (GgmlType::Q2_K, 10),
            (GgmlType::Q3_K, 11),
            (GgmlType::Q4_K, 12),
            (GgmlType::Q5_K, 13),
            (GgmlType::Q6_K, 14),
            (GgmlType::Q8_K, 15),
            (GgmlType::BF16, 30),
        ];
        for (t, id) in known {
            assert_eq!(t.id(), id);
            assert_eq!(GgmlType::from_id(id), t);
        }
        assert_eq!(GgmlType::from_id(9), GgmlType::Other(9));
        assert_eq!(GgmlType::Other(9).id(), 9);
        assert_eq!(GgmlType::Other(9).to_string(), "ggml type 9");
        assert_eq!(GgmlType::Q4_K.to_string(), "Q4_K");
    }

    #[test]
    fn byte_sizes_follow_block_layouts() {
        assert_eq!(GgmlType::F32.byte_size(3), Some(12));
        assert_eq!(GgmlType::BF16.byte_size(3), Some(6));
        assert_eq!(GgmlType::Q8_0.byte_size(64), Some(68));
        assert_eq!(GgmlType::Q4_1.byte_size(576 * 576), Some(576 * 576 / 32 * 20));
        assert_eq!(GgmlType::Q6_K.byte_size(512), Some(420));
        assert_eq!(GgmlType::Q8_0.byte_size(33), None);
        assert_eq!(GgmlType::Other(99).byte_size(32), None);
        assert_eq!(GgmlType::Q8_0.byte_size(u64::MAX / 32 * 32), None);
    }

    #[test]
    fn plain_floats_convert_exactly() {
        let mut bytes = Vec::new();
        for v in [1.5f32, -2.25, 0.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(dequantize(GgmlType::F32, &bytes, 3).unwrap(), vec![1.5, -2.25, 0.0]);

        let halves: Vec<u8> = [0.5f32, -3.0].iter().flat_map(|&v| f16_bytes(v)).collect();
        assert_eq!(dequantize(GgmlType::F16, &halves, 2).unwrap(), vec![0.5, -3.0]);

        // bf16 is the top half of an f32: 0x3FC0 is 1.5, 0xC040 is -3.0.
        let bf = [0xC0, 0x3F, 0x40, 0xC0];
        assert_eq!(dequantize(GgmlType::BF16, &bf, 2).unwrap(), vec![1.5, -3.0]);
    }

    #[test]
    fn q8_0_scales_signed_bytes() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let out = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
        let expected: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn q4_0_puts_high_nibbles_in_the_second_half() {
        let mut block = f16_bytes(2.0).to_vec();
        // byte j: low nibble j, high nibble 15 - j
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 2.0, "value {j}");
            assert_eq!(out[j + 16], ((15 - j) as f32 - 8.0) * 2.0, "value {}", j + 16);
        }
    }

    #[test]
    fn k_scales_unpack_high_bits() {
        // Sub-block 5: scale 0b10_0111 = 39 → low nibble 7 in byte 9, top bits 0b10 in byte 1;
        // min 0b01_1010 = 26 → high nibble 0xA in byte 9, top bits 0b01 in byte 5.
        let mut s = [0u8; 12];
        s[9] = 0xA7;
        s[1] = 0b10 << 6;
        s[5] = 0b01 << 6;
        assert_eq!(k_scale_min(&s, 5), (39, 26));
        // The top bits of bytes 1 and 5 must not leak into sub-block 1's own 6-bit values.
        assert_eq!(k_scale_min(&s, 1), (0, 0));
    }

    #[test]
    fn lengths_and_types_are_checked() {
        assert_eq!(
            dequantize(GgmlType::Q8_0, &[0; 34], 33),
            Err(QuantError::PartialBlock { dtype: GgmlType::Q8_0, count: 33, block: 32 })
        );
        assert_eq!(
            dequantize(GgmlType::Q8_0, &[0; 35], 32),
            Err(QuantError::ByteLength { dtype: GgmlType::Q8_0, count: 32, expected: 34, actual: 35 })
        );
        assert_eq!(dequantize(GgmlType::Q5_0, &[0; 22], 32), Err(QuantError::Unsupported(GgmlType::Q5_0)));
        let message = dequantize(GgmlType::Other(77), &[], 0).unwrap_err().to_string();
        assert!(message.contains("ggml type 77"), "{message}");
        let mut out = [0.0f32; 2];
        assert!(dequantize_into(GgmlType::F32, &[0; 4], &mut out).is_err());
    }

    #[test]
    fn threaded_conversion_matches_single_thread() {
        // Enough blocks to cross the threading threshold, with varied scales so that a block
        // converted into the wrong slot would show.
        let blocks = PARALLEL_MIN_VALUES / 32 + 7;
        let mut bytes = Vec::with_capacity(blocks * 20);
        for b in 0..blocks {
            bytes.extend_from_slice(&f16_bytes((b % 13) as f32 * 0.25));
            bytes.extend_from_slice(&f16_bytes(-((b % 5) as f32)));
            bytes.extend((0..16).map(|j| ((b + j) % 256) as u8));
        }
        let n = blocks * 32;
        let threaded = dequantize(GgmlType::Q4_1, &bytes, n).unwrap();
        let mut single = vec![0.0; n];
        convert_q4_1(&bytes, &mut single);
        assert_eq!(threaded, single);
    }
}
