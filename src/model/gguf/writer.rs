//! Writing GGUF v3 files.
//!
//! The service never writes models; this exists so that tests can build small models and
//! quantisation fixtures in code rather than ship binary files. It writes what ggml writes:
//! header, metadata, tensor descriptors, zero padding up to the alignment, then each tensor's
//! bytes padded to the alignment. Tensor data is taken as raw bytes (already in the target
//! type's block layout), so fixtures spell out exactly what a reader must decode.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::quant::GgmlType;
use super::{value_type, MetaValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// The format version this writer produces.
const VERSION: u32 = 3;

/// Builds a GGUF file from metadata and tensors, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Why a file could not be written. Problems with the content are found before anything is
/// written, and name the key or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write GGUF file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata key `{0}` is added twice")]
    DuplicateKey(String),
    #[error("tensor `{0}` is added twice")]
    DuplicateTensor(String),
    #[error("metadata key `{key}`: {reason}")]
    BadValue { key: String, reason: String },
    #[error("tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
}

impl GgufWriter {
    /// An empty file: no metadata, no tensors, the default alignment.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds a metadata entry. Arrays must be homogeneous; an empty array is written with
    /// element type u8, since nothing says otherwise.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetaValue) -> &mut GgufWriter {
        self.metadata.push((key.into(), value));
        self
    }

    /// Sets `general.alignment`, replacing an earlier value.
    pub fn set_alignment(&mut self, alignment: u32) -> &mut GgufWriter {
        self.metadata.retain(|(k, _)| k != ALIGNMENT_KEY);
        self.add_metadata(ALIGNMENT_KEY, MetaValue::U32(alignment))
    }

    /// Adds a tensor from its stored bytes. `dims` are innermost first, as in the file. For the
    /// types whose layout is known, the byte length must match the dimensions; for
    /// [`GgmlType::Other`] any bytes are accepted, so that tests can write types no reader
    /// supports.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        dtype: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> &mut GgufWriter {
        self.tensors.push(PendingTensor { name: name.into(), dims: dims.to_vec(), dtype, data: data.into() });
        self
    }

    /// Adds an F32 tensor from its values (row-major, innermost dimension `dims[0]` fastest).
    pub fn add_f32_tensor(&mut self, name: impl Into<String>, dims: &[u64], values: &[f32]) -> &mut GgufWriter {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, data)
    }

    /// The complete file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        let alignment = self.validate()?;
        let align = |n: u64| n.next_multiple_of(u64::from(alignment));

        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.dtype.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = align(offset + t.data.len() as u64);
        }
        out.resize(align(out.len() as u64) as usize, 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(align(out.len() as u64) as usize, 0);
        }
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| WriteError::Io { path: path.to_owned(), source })
    }

    /// Checks everything a reader would reject, and returns the alignment to use.
    fn validate(&self) -> Result<u32, WriteError> {
        let mut keys = HashSet::new();
        for (key, value) in &self.metadata {
            if !keys.insert(key.as_str()) {
                return Err(WriteError::DuplicateKey(key.clone()));
            }
            check_value(value).map_err(|reason| WriteError::BadValue { key: key.clone(), reason })?;
        }
        let alignment = match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, value)) => match value {
                MetaValue::U32(a) if a.is_power_of_two() => *a,
                other => {
                    return Err(WriteError::BadValue {
                        key: ALIGNMENT_KEY.to_owned(),
                        reason: format!("must be a u32 power of two, not {}", other.describe()),
                    })
                }
            },
        };

        let mut names = HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(WriteError::DuplicateTensor(t.name.clone()));
            }
            let bad = |reason: String| WriteError::BadTensor { name: t.name.clone(), reason };
            if t.dims.len() > 4 {
                return Err(bad(format!("{} dimensions (at most 4)", t.dims.len())));
            }
            let Some(layout) = t.dtype.block_layout() else { continue };
            let innermost = t.dims.first().copied().unwrap_or(1);
            if innermost % layout.values as u64 != 0 {
                return Err(bad(format!("rows of {innermost} values are not whole {} blocks", t.dtype)));
            }
            let n = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let expected = n.and_then(|n| t.dtype.byte_size(n));
            if expected != Some(t.data.len() as u64) {
                return Err(bad(format!(
                    "dimensions {:?} of {} take {} bytes, but {} were given",
                    t.dims,
                    t.dtype,
                    expected.map_or_else(|| "an overflowing number of".to_owned(), |e| e.to_string()),
                    t.data.len()
                )));
            }
        }
        Ok(alignment)
    }
}

fn check_value(value: &MetaValue) -> Result<(), String> {
    if let MetaValue::Array(items) = value {
        if let Some(first) = items.first() {
            let ty = first.type_id();
            if let Some(odd) = items.iter().find(|v| v.type_id() != ty) {
                return Err(format!(
                    "arrays hold one type, but this one mixes {} and {}",
                    first.type_name(),
                    odd.type_name()
                ));
            }
        }
        items.iter().try_for_each(check_value)?;
    }
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => write_string(out, s),
        MetaValue::Array(items) => {
            let elem = items.first().map_or(value_type::U8, MetaValue::type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_format() {
        let mut w = GgufWriter::new();
        w.add_metadata("k", MetaValue::U16(0xBEEF)).add_f32_tensor("t", &[1], &[2.5]);
        let b = w.to_bytes().unwrap();
        let mut expected = b"GGUF".to_vec();
        expected.extend(3u32.to_le_bytes());
        expected.extend(1u64.to_le_bytes()); // tensors
        expected.extend(1u64.to_le_bytes()); // metadata entries
        expected.extend(1u64.to_le_bytes());
        expected.push(b'k');
        expected.extend(2u32.to_le_bytes()); // u16
        expected.extend(0xBEEFu16.to_le_bytes());
        expected.extend(1u64.to_le_bytes());
        expected.push(b't');
        expected.extend(1u32.to_le_bytes()); // one dimension
        expected.extend(1u64.to_le_bytes());
        expected.extend(0u32.to_le_bytes()); // F32
        expected.extend(0u64.to_le_bytes()); // offset
        expected.resize(96, 0); // 72 header bytes, padded to 32
        expected.extend(2.5f32.to_le_bytes());
        expected.resize(128, 0);
        assert_eq!(b, expected);
    }

    #[test]
    fn arrays_carry_their_element_type() {
        let mut w = GgufWriter::new();
        w.add_metadata("a", MetaValue::Array(vec![MetaValue::String("x".into())]));
        let b = w.to_bytes().unwrap();
        // After the 24-byte header and the key ("a", 9 bytes): array tag, element tag, count.
        assert_eq!(&b[33..37], &9u32.to_le_bytes());
        assert_eq!(&b[37..41], &8u32.to_le_bytes());
        assert_eq!(&b[41..49], &1u64.to_le_bytes());
    }

    #[test]
    fn rejects_what_a_reader_would() {
        let err = |w: &GgufWriter| w.to_bytes().unwrap_err();

        let mut w = GgufWriter::new();
        w.add_metadata("k", MetaValue::U8(1)).add_metadata("k", MetaValue::U8(2));
        assert!(matches!(err(&w), WriteError::DuplicateKey(k) if k == "k"));

        let mut w = GgufWriter::new();
        w.add_metadata("m", MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I32(2)]));
        assert!(matches!(err(&w), WriteError::BadValue { key, .. } if key == "m"));

        let mut w = GgufWriter::new();
        w.set_alignment(48);
        assert!(matches!(err(&w), WriteError::BadValue { key, .. } if key == ALIGNMENT_KEY));

        let mut w = GgufWriter::new();
        w.add_f32_tensor("t", &[2], &[1.0, 2.0]).add_f32_tensor("t", &[1], &[1.0]);
        assert!(matches!(err(&w), WriteError::DuplicateTensor(t) if t == "t"));

        let mut w = GgufWriter::new();
        w.add_tensor("q", &[32], GgmlType::Q8_0, vec![0; 33]);
        let e = err(&w);
        assert!(matches!(&e, WriteError::BadTensor { name, .. } if name == "q"), "{e:?}");
        assert!(e.to_string().contains("34 bytes"), "{e}");

        let mut w = GgufWriter::new();
        w.add_tensor("q", &[16], GgmlType::Q4_0, vec![0; 9]);
        assert!(matches!(err(&w), WriteError::BadTensor { .. }));
    }

    #[test]
    fn set_alignment_replaces_the_previous_value() {
        let mut w = GgufWriter::new();
        w.set_alignment(16).set_alignment(8);
        assert_eq!(w.metadata, vec![(ALIGNMENT_KEY.to_owned(), MetaValue::U32(8))]);
    }
}
