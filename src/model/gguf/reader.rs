//! Reading GGUF v2/v3 files.
//!
//! The file is memory-mapped: metadata is parsed once into owned values, tensor data stays in
//! the mapping and is handed out as byte slices. Model files come from outside (downloads, user
//! paths), so nothing read from one is trusted: every length, count and offset is checked
//! against the file size before it is used, and a bad file gives a [`GgufError`] that names the
//! file (and the key or tensor concerned) instead of a panic or a huge allocation.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quant::{self, GgmlType, QuantError};
use super::{value_type, MetaValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// ggml tensors have at most four dimensions; more in a file means it is corrupt.
const MAX_DIMS: u32 = 4;

/// Arrays of arrays are legal but never used in practice; the bound keeps a corrupt file from
/// recursing deep enough to overflow the stack.
const MAX_ARRAY_NESTING: usize = 8;

/// Smallest possible encodings, used to bound up-front allocations by the bytes that remain:
/// a metadata entry is a key length (8), a type (4) and at least one byte of value; a tensor
/// descriptor is a name length (8), a dimension count (4), a type (4) and an offset (8).
const MIN_ENTRY_BYTES: usize = 13;
const MIN_TENSOR_INFO_BYTES: usize = 24;

/// Where one tensor's data lies and what it holds. `dims` are in ggml order, innermost
/// (fastest-varying) first; `offset` is relative to the start of the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values (the product of the dimensions; saturates rather than wraps, though
    /// tensors from [`GgufFile::open`] are checked not to overflow).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Row-major shape: the dimensions outermost first, as torch and most Rust code expect.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect()
    }

    /// Bytes of data, when the type's layout is known.
    pub fn byte_size(&self) -> Option<u64> {
        self.dtype.byte_size(self.n_elements())
    }
}

/// Everything that can be wrong when reading a GGUF file. Every variant carries the file's path;
/// those about one tensor or key carry its name too.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a GGUF file: it starts with \"{}\", not \"GGUF\"", path.display(), found.escape_ascii())]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{}: GGUF version {version} is not supported (only versions 2 and 3 are)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{} is truncated: {what} needs bytes {start}..{end}, but the file has {len} bytes", path.display())]
    Truncated { path: PathBuf, what: String, start: u64, end: u64, len: u64 },
    #[error("{} is malformed at byte {offset}: {reason}", path.display())]
    Malformed { path: PathBuf, offset: u64, reason: String },
    #[error("{}: metadata key `{key}` is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key `{key}` holds {found}, expected {expected}", path.display())]
    WrongType { path: PathBuf, key: String, expected: &'static str, found: String },
    #[error("{}: no tensor named `{name}`", path.display())]
    NoSuchTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}`: {reason}", path.display())]
    BadTensor { path: PathBuf, name: String, reason: String },
    #[error(
        "{}: the data of tensor `{name}` (bytes {start}..{end}) runs past the end of the file ({len} bytes)",
        path.display()
    )]
    TensorOutOfBounds { path: PathBuf, name: String, start: u64, end: u64, len: u64 },
    #[error("{}: tensor `{name}`: {source}", path.display())]
    Dequantize {
        path: PathBuf,
        name: String,
        #[source]
        source: QuantError,
    },
}

/// An open GGUF file: its metadata in file order, its tensor descriptors, and the mapping their
/// data is read from.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// Byte range of each tensor in the mapping, parallel to `tensors`; `None` when the type's
    /// size is unknown ([`GgmlType::Other`]).
    ranges: Vec<Option<Range<usize>>>,
    alignment: u32,
    data_offset: u64,
    map: Mapping,
}

/// The file's bytes. An empty file cannot be mapped on every platform, and has nothing to map.
enum Mapping {
    Mapped(Mmap),
    Empty,
}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        match self {
            Mapping::Mapped(m) => m,
            Mapping::Empty => &[],
        }
    }
}

impl fmt::Debug for GgufFile {
    // Not derived: the metadata of a chat model holds a vocabulary of tens of thousands of
    // strings, which nobody wants in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_entries", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Opens, maps and validates the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io_error = |source| GgufError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        let map = if len == 0 {
            Mapping::Empty
        } else {
            // SAFETY: the mapping is read-only, and model files are not modified while the
            // service runs; a file truncated underneath a live mapping would fault (SIGBUS) on
            // access, as it would for any mmap-based loader (llama.cpp included). The bytes are
            // never assumed to be valid for any type: all parsing goes through bounds checks.
            Mapping::Mapped(unsafe { Mmap::map(&file) }.map_err(io_error)?)
        };
        let header = parse_header(path, map.bytes())?;
        let ranges = locate_tensors(path, &header, map.bytes().len())?;

        let metadata_index = header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path: path.to_owned(),
            version: header.version,
            metadata: header.metadata,
            metadata_index,
            tensors: header.tensors,
            tensor_index,
            ranges,
            alignment: header.alignment,
            data_offset: header.data_offset,
            map,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and of tensor offsets.
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Where the data section starts, in bytes from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata entries, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The value of metadata key `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// An integer value that fits in `u32`, whatever integer type the file stored it as
    /// (writers disagree: the same key is u32 in one file and i32 or u64 in another).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        v.as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer in u32 range", v))
    }

    /// An integer value that fits in `u64`, whatever integer type the file stored it as.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer in u64 range", v))
    }

    /// A numeric value as `f32` (floats, and integers for files that store e.g. a RoPE base as
    /// one).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f64().map(|f| f as f32).ok_or_else(|| self.wrong_type(key, "a number", v))
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "a bool", v))
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`), borrowed from the parsed metadata.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| self.wrong_type(key, "an array of strings", v))?;
        items.iter().map(|item| item.as_str().ok_or_else(|| self.wrong_type(key, "an array of strings", v))).collect()
    }

    /// An array of integers that each fit in `i32` (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| self.wrong_type(key, "an array of integers", v))?;
        items
            .iter()
            .map(|item| {
                item.as_integer()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| self.wrong_type(key, "an array of integers in i32 range", v))
            })
            .collect()
    }

    /// An array of numbers as `f32` (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| self.wrong_type(key, "an array of numbers", v))?;
        items
            .iter()
            .map(|item| item.as_f64().map(|f| f as f32).ok_or_else(|| self.wrong_type(key, "an array of numbers", v)))
            .collect()
    }

    /// All tensor descriptors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The descriptor of tensor `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw stored bytes of tensor `name` (blocks, for quantised types).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let index = self.index_of(name)?;
        match &self.ranges[index] {
            Some(range) => Ok(&self.map.bytes()[range.clone()]),
            None => Err(self.bad_tensor(
                name,
                format!("its type ({}) has no known size, so its data cannot be located", self.tensors[index].dtype),
            )),
        }
    }

    /// Row-major shape (dims reversed) and the values as f32.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let (info, bytes, n) = self.prepare_dequantize(name)?;
        let values = quant::dequantize(info.dtype, bytes, n).map_err(|source| self.dequantize_error(name, source))?;
        Ok((info.shape(), values))
    }

    /// Converts tensor `name` into `out`, which must hold exactly its number of values; for
    /// callers that own the destination storage and want to skip an intermediate buffer.
    pub fn dequantize_into(&self, name: &str, out: &mut [f32]) -> Result<(), GgufError> {
        let (info, bytes, n) = self.prepare_dequantize(name)?;
        if out.len() != n {
            return Err(self.bad_tensor(name, format!("it has {n} values, but the output buffer holds {}", out.len())));
        }
        quant::dequantize_into(info.dtype, bytes, out).map_err(|source| self.dequantize_error(name, source))
    }

    fn prepare_dequantize(&self, name: &str) -> Result<(&TensorInfo, &[u8], usize), GgufError> {
        let info = &self.tensors[self.index_of(name)?];
        // Checked first so that an unsupported type is reported as such, even when its size is
        // unknown and its bytes could not be located.
        if !info.dtype.can_dequantize() {
            return Err(self.dequantize_error(name, QuantError::Unsupported(info.dtype)));
        }
        let bytes = self.tensor_bytes(name)?;
        let n = usize::try_from(info.n_elements())
            .map_err(|_| self.bad_tensor(name, "it has more values than this platform can address".to_owned()))?;
        Ok((info, bytes, n))
    }

    fn index_of(&self, name: &str) -> Result<usize, GgufError> {
        self.tensor_index
            .get(name)
            .copied()
            .ok_or_else(|| GgufError::NoSuchTensor { path: self.path.clone(), name: name.to_owned() })
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { path: self.path.clone(), key: key.to_owned() })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
        GgufError::WrongType { path: self.path.clone(), key: key.to_owned(), expected, found: found.describe() }
    }

    fn bad_tensor(&self, name: &str, reason: String) -> GgufError {
        GgufError::BadTensor { path: self.path.clone(), name: name.to_owned(), reason }
    }

    fn dequantize_error(&self, name: &str, source: QuantError) -> GgufError {
        GgufError::Dequantize { path: self.path.clone(), name: name.to_owned(), source }
    }
}

/// What the header says, before tensor positions are checked.
struct Header {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    alignment: u32,
    data_offset: u64,
}

/// Why a read failed, before the caller adds what was being read.
enum Fault {
    /// The field needs bytes `start..end`, past the end of the file.
    Eof { start: u64, end: u64 },
    /// The bytes are there but make no sense.
    Bad { offset: u64, reason: String },
}

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Fault> {
        let start = self.pos;
        let fits = usize::try_from(n).ok().and_then(|n| start.checked_add(n)).filter(|&end| end <= self.buf.len());
        match fits {
            Some(end) => {
                self.pos = end;
                Ok(&self.buf[start..end])
            }
            None => Err(Fault::Eof { start: start as u64, end: (start as u64).saturating_add(n) }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Fault> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Fault> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, Fault> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Fault> {
        self.array().map(u64::from_le_bytes)
    }

    /// A GGUF string: a u64 byte length, then UTF-8 bytes (no terminator).
    fn string(&mut self) -> Result<&'a str, Fault> {
        let len = self.u64()?;
        let at = self.pos as u64;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|e| Fault::Bad {
            offset: at + e.valid_up_to() as u64,
            reason: "string is not valid UTF-8".to_owned(),
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, Fault> {
        let at = self.pos as u64;
        Ok(match ty {
            value_type::U8 => MetaValue::U8(self.u8()?),
            value_type::I8 => MetaValue::I8(self.u8()? as i8),
            value_type::U16 => MetaValue::U16(self.u16()?),
            value_type::I16 => MetaValue::I16(self.u16()? as i16),
            value_type::U32 => MetaValue::U32(self.u32()?),
            value_type::I32 => MetaValue::I32(self.u32()? as i32),
            value_type::U64 => MetaValue::U64(self.u64()?),
            value_type::I64 => MetaValue::I64(self.u64()? as i64),
            value_type::F32 => MetaValue::F32(f32::from_bits(self.u32()?)),
            value_type::F64 => MetaValue::F64(f64::from_bits(self.u64()?)),
            // ggml writes 0 or 1; anything else is read as C would, as true.
            value_type::BOOL => MetaValue::Bool(self.u8()? != 0),
            value_type::STRING => MetaValue::String(self.string()?.to_owned()),
            value_type::ARRAY => {
                let elem = self.u32()?;
                let count = self.u64()?;
                let Some(min_size) = min_value_size(elem) else {
                    return Err(Fault::Bad { offset: at, reason: format!("array of unknown value type {elem}") });
                };
                if elem == value_type::ARRAY && depth >= MAX_ARRAY_NESTING {
                    return Err(Fault::Bad {
                        offset: at,
                        reason: format!("arrays nested more than {MAX_ARRAY_NESTING} deep"),
                    });
                }
                // A corrupt count must not turn into a huge allocation: reserve only what the
                // remaining bytes could hold. The loop itself stops at the end of the file, since
                // every element consumes at least one byte.
                let capacity = count.min((self.remaining() / min_size) as u64) as usize;
                let mut items = Vec::with_capacity(capacity);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            other => return Err(Fault::Bad { offset: at, reason: format!("unknown value type {other}") }),
        })
    }
}

/// Bytes taken by the smallest value of type `ty`, or `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        value_type::U8 | value_type::I8 | value_type::BOOL => 1,
        value_type::U16 | value_type::I16 => 2,
        value_type::U32 | value_type::I32 | value_type::F32 => 4,
        value_type::U64 | value_type::I64 | value_type::F64 | value_type::STRING => 8,
        value_type::ARRAY => 12,
        _ => return None,
    })
}

fn parse_header(path: &Path, buf: &[u8]) -> Result<Header, GgufError> {
    let len = buf.len() as u64;
    let fail = |fault: Fault, what: &dyn fmt::Display| match fault {
        Fault::Eof { start, end } => {
            GgufError::Truncated { path: path.to_owned(), what: what.to_string(), start, end, len }
        }
        Fault::Bad { offset, reason } => {
            GgufError::Malformed { path: path.to_owned(), offset, reason: format!("{what}: {reason}") }
        }
    };
    let malformed =
        |offset: usize, reason: String| GgufError::Malformed { path: path.to_owned(), offset: offset as u64, reason };
    let mut r = Cursor { buf, pos: 0 };

    match r.take(4) {
        Ok(magic) if magic == GGUF_MAGIC => {}
        // A short file that starts like a GGUF file was cut off; anything else is another format.
        Err(fault) if GGUF_MAGIC.starts_with(buf) => return Err(fail(fault, &"the magic number")),
        _ => return Err(GgufError::BadMagic { path: path.to_owned(), found: buf[..buf.len().min(4)].to_vec() }),
    }
    let version = r.u32().map_err(|f| fail(f, &"the format version"))?;
    if !(2..=3).contains(&version) {
        // Version 1 used 32-bit counts and lengths; it is long obsolete.
        return Err(GgufError::UnsupportedVersion { path: path.to_owned(), version });
    }
    let n_tensors = r.u64().map_err(|f| fail(f, &"the tensor count"))?;
    let n_entries = r.u64().map_err(|f| fail(f, &"the metadata count"))?;

    let mut metadata: Vec<(String, MetaValue)> =
        Vec::with_capacity(n_entries.min((r.remaining() / MIN_ENTRY_BYTES) as u64) as usize);
    let mut seen_keys = HashMap::new();
    for i in 0..n_entries {
        let at = r.pos;
        let key = r.string().map_err(|f| fail(f, &format_args!("the key of metadata entry {i}")))?.to_owned();
        let ty = r.u32().map_err(|f| fail(f, &format_args!("the type of metadata key `{key}`")))?;
        let value = r.value(ty, 0).map_err(|f| fail(f, &format_args!("the value of metadata key `{key}`")))?;
        if seen_keys.insert(key.clone(), i).is_some() {
            return Err(malformed(at, format!("metadata key `{key}` appears twice")));
        }
        metadata.push((key, value));
    }

    let alignment = match seen_keys.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let value = &metadata[i as usize].1;
            match value.as_integer().and_then(|a| u32::try_from(a).ok()) {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::WrongType {
                        path: path.to_owned(),
                        key: ALIGNMENT_KEY.to_owned(),
                        expected: "a power of two in u32 range",
                        found: value.describe(),
                    })
                }
            }
        }
    };

    let mut tensors: Vec<TensorInfo> =
        Vec::with_capacity(n_tensors.min((r.remaining() / MIN_TENSOR_INFO_BYTES) as u64) as usize);
    let mut seen_tensors = HashMap::new();
    for i in 0..n_tensors {
        let at = r.pos;
        let name = r.string().map_err(|f| fail(f, &format_args!("the name of tensor {i}")))?.to_owned();
        let what = |field: &str| format!("the {field} of tensor `{name}`");
        let n_dims = r.u32().map_err(|f| fail(f, &what("dimension count")))?;
        if n_dims > MAX_DIMS {
            return Err(malformed(at, format!("tensor `{name}` claims {n_dims} dimensions (at most {MAX_DIMS})")));
        }
        let dims =
            (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>().map_err(|f| fail(f, &what("dimensions")))?;
        let dtype = GgmlType::from_id(r.u32().map_err(|f| fail(f, &what("type")))?);
        let offset = r.u64().map_err(|f| fail(f, &what("data offset")))?;
        if seen_tensors.insert(name.clone(), i).is_some() {
            return Err(malformed(at, format!("tensor `{name}` appears twice")));
        }
        tensors.push(TensorInfo { name, dims, dtype, offset });
    }

    let data_offset = (r.pos as u64).next_multiple_of(u64::from(alignment));
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

/// Checks each tensor's size and position and returns its byte range in the file.
fn locate_tensors(path: &Path, header: &Header, file_len: usize) -> Result<Vec<Option<Range<usize>>>, GgufError> {
    let bad =
        |name: &str, reason: String| GgufError::BadTensor { path: path.to_owned(), name: name.to_owned(), reason };
    header
        .tensors
        .iter()
        .map(|t| {
            let n = t
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(&t.name, format!("dimensions {:?} overflow a 64-bit element count", t.dims)))?;
            let Some(layout) = t.dtype.block_layout() else {
                // Unknown types cannot be sized; the tensor stays listed (its metadata may still
                // be of use) and fails only when its data is asked for.
                return Ok(None);
            };
            let innermost = t.dims.first().copied().unwrap_or(1);
            if innermost % layout.values as u64 != 0 {
                return Err(bad(
                    &t.name,
                    format!(
                        "its rows of {innermost} values are not whole {} blocks of {} values",
                        t.dtype, layout.values
                    ),
                ));
            }
            if t.offset % u64::from(header.alignment) != 0 {
                return Err(bad(
                    &t.name,
                    format!("its data offset {} is not a multiple of the alignment {}", t.offset, header.alignment),
                ));
            }
            let size = t.dtype.byte_size(n).ok_or_else(|| bad(&t.name, format!("{n} values overflow a byte count")))?;
            let start = header.data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len as u64 => Ok(Some(start as usize..end as usize)),
                _ => Err(GgufError::TensorOutOfBounds {
                    path: path.to_owned(),
                    name: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    len: file_len as u64,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufWriter;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A file with one key of each interesting kind and two small tensors.
    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", MetaValue::String("llama".into()))
            .add_metadata("llama.block_count", MetaValue::U32(30))
            .add_metadata("signed.small", MetaValue::I32(7))
            .add_metadata("signed.negative", MetaValue::I64(-1))
            .add_metadata("big", MetaValue::U64(1 << 40))
            .add_metadata("rope", MetaValue::F32(100000.0))
            .add_metadata("flag", MetaValue::Bool(true))
            .add_metadata(
                "words",
                MetaValue::Array(vec![MetaValue::String("a".into()), MetaValue::String("bé".into())]),
            )
            .add_metadata("types", MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(3)]))
            .add_f32_tensor("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .add_f32_tensor("b", &[3], &[-1.0, 0.5, 9.0]);
        w.to_bytes().unwrap()
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let f = GgufFile::open(&write(&dir, "s.gguf", &sample())).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_offset() % 32, 0);
        assert_eq!(f.metadata().len(), 9);
        assert_eq!(f.metadata()[0].0, "general.architecture");
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
        assert_eq!(f.get_u32("signed.small").unwrap(), 7);
        assert_eq!(f.get_u64("big").unwrap(), 1 << 40);
        assert_eq!(f.get_f32("rope").unwrap(), 100000.0);
        assert!(f.get_bool("flag").unwrap());
        assert_eq!(f.get_str_array("words").unwrap(), vec!["a", "bé"]);
        assert_eq!(f.get_i32_array("types").unwrap(), vec![1, 3]);
        assert_eq!(f.get_f32_array("types").unwrap(), vec![1.0, 3.0]);

        let w = f.tensor("w").unwrap();
        assert_eq!((w.dims.as_slice(), w.dtype, w.shape()), (&[2u64, 3][..], GgmlType::F32, vec![3, 2]));
        assert_eq!(f.tensor_bytes("b").unwrap().len(), 12);
        let (shape, values) = f.dequantize("w").unwrap();
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut out = [0.0; 3];
        f.dequantize_into("b", &mut out).unwrap();
        assert_eq!(out, [-1.0, 0.5, 9.0]);
        assert!(matches!(f.dequantize_into("b", &mut [0.0; 2]), Err(GgufError::BadTensor { .. })));
    }

    #[test]
    fn typed_getters_report_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "s.gguf", &sample());
        let f = GgufFile::open(&path).unwrap();
        let err = f.get_u32("signed.negative").unwrap_err();
        assert!(matches!(&err, GgufError::WrongType { key, .. } if key == "signed.negative"), "{err:?}");
        assert!(err.to_string().contains("i64 -1"), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(matches!(f.get_u32("big"), Err(GgufError::WrongType { .. })));
        assert!(matches!(f.get_str("llama.block_count"), Err(GgufError::WrongType { .. })));
        assert!(matches!(f.get_str_array("types"), Err(GgufError::WrongType { .. })));
        assert!(matches!(f.get_i32_array("words"), Err(GgufError::WrongType { .. })));
        let err = f.get_f32("absent.key").unwrap_err();
        assert!(matches!(&err, GgufError::MissingKey { key, .. } if key == "absent.key"));
        let err = f.dequantize("absent.tensor").unwrap_err();
        assert!(matches!(&err, GgufError::NoSuchTensor { name, .. } if name == "absent.tensor"));
    }

    #[test]
    fn reads_version_2() {
        let mut bytes = sample();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let f = GgufFile::open(&write(&dir, "v2.gguf", &bytes)).unwrap();
        assert_eq!(f.version(), 2);
        assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    }

    #[test]
    fn rejects_other_versions() {
        let mut bytes = sample();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let err = GgufFile::open(&write(&dir, "v1.gguf", &bytes)).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion { version: 1, .. }), "{err:?}");
    }

    #[test]
    fn every_truncation_of_the_header_is_a_typed_error() {
        let bytes = sample();
        let dir = tempfile::tempdir().unwrap();
        let full = GgufFile::open(&write(&dir, "full.gguf", &bytes)).unwrap();
        let header_end = full.data_offset() as usize;
        for cut in 0..header_end {
            let path = write(&dir, "cut.gguf", &bytes[..cut]);
            match GgufFile::open(&path) {
                Err(GgufError::Truncated { path: p, .. }) | Err(GgufError::TensorOutOfBounds { path: p, .. }) => {
                    assert_eq!(p, path)
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn huge_counts_fail_without_huge_allocations() {
        // Magic, version, 0 tensors, 1 entry: key "k", an array of u64::MAX strings.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(value_type::ARRAY.to_le_bytes());
        bytes.extend(value_type::STRING.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes()); // first string's length
        let dir = tempfile::tempdir().unwrap();
        let err = GgufFile::open(&write(&dir, "huge.gguf", &bytes)).unwrap_err();
        assert!(matches!(&err, GgufError::Truncated { what, .. } if what.contains("`k`")), "{err:?}");

        // A metadata count of u64::MAX with nothing after it.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        let err = GgufFile::open(&write(&dir, "count.gguf", &bytes)).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
    }

    #[test]
    fn rejects_malformed_headers() {
        let dir = tempfile::tempdir().unwrap();
        let header = |n_entries: u64| {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(0u64.to_le_bytes());
            b.extend(n_entries.to_le_bytes());
            b
        };
        // Unknown value type.
        let mut bytes = header(1);
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(99u32.to_le_bytes());
        bytes.extend([0; 8]);
        let err = GgufFile::open(&write(&dir, "t.gguf", &bytes)).unwrap_err();
        assert!(matches!(&err, GgufError::Malformed { reason, .. } if reason.contains("`k`") && reason.contains("99")));

        // Key that is not UTF-8.
        let mut bytes = header(1);
        bytes.extend(1u64.to_le_bytes());
        bytes.push(0xFF);
        bytes.extend(value_type::U8.to_le_bytes());
        bytes.push(0);
        let err = GgufFile::open(&write(&dir, "u.gguf", &bytes)).unwrap_err();
        // The key's bytes follow the 24-byte header and the key's 8-byte length.
        assert!(matches!(&err, GgufError::Malformed { offset: 32, .. }), "{err:?}");

        // Arrays nested past the limit.
        let mut bytes = header(1);
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(value_type::ARRAY.to_le_bytes());
        for _ in 0..=MAX_ARRAY_NESTING {
            bytes.extend(value_type::ARRAY.to_le_bytes());
            bytes.extend(1u64.to_le_bytes());
        }
        bytes.extend([0; 64]);
        let err = GgufFile::open(&write(&dir, "n.gguf", &bytes)).unwrap_err();
        assert!(matches!(&err, GgufError::Malformed { reason, .. } if reason.contains("nested")), "{err:?}");

        // Alignment that is not a power of two.
        let mut bytes = header(1);
        bytes.extend((ALIGNMENT_KEY.len() as u64).to_le_bytes());
        bytes.extend(ALIGNMENT_KEY.as_bytes());
        bytes.extend(value_type::U32.to_le_bytes());
        bytes.extend(24u32.to_le_bytes());
        let err = GgufFile::open(&write(&dir, "a.gguf", &bytes)).unwrap_err();
        assert!(matches!(&err, GgufError::WrongType { key, .. } if key == ALIGNMENT_KEY), "{err:?}");
    }

    #[test]
    fn honours_a_custom_alignment() {
        let mut w = GgufWriter::new();
        w.set_alignment(64).add_f32_tensor("a", &[3], &[1.0, 2.0, 3.0]).add_f32_tensor("b", &[1], &[4.0]);
        let dir = tempfile::tempdir().unwrap();
        let f = GgufFile::open(&write(&dir, "al.gguf", &w.to_bytes().unwrap())).unwrap();
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.tensor("b").unwrap().offset, 64);
        assert_eq!(f.dequantize("b").unwrap().1, vec![4.0]);
    }

    #[test]
    fn unknown_types_are_listed_but_not_readable() {
        let mut w = GgufWriter::new();
        w.add_tensor("odd", &[4], GgmlType::Other(200), vec![1, 2, 3, 4]);
        let dir = tempfile::tempdir().unwrap();
        let f = GgufFile::open(&write(&dir, "o.gguf", &w.to_bytes().unwrap())).unwrap();
        assert_eq!(f.tensor("odd").unwrap().dtype, GgmlType::Other(200));
        assert!(matches!(f.tensor_bytes("odd"), Err(GgufError::BadTensor { .. })));
        assert!(matches!(
            f.dequantize("odd"),
            Err(GgufError::Dequantize { source: QuantError::Unsupported(GgmlType::Other(200)), .. })
        ));
    }

    #[test]
    fn empty_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = GgufFile::open(&write(&dir, "empty.gguf", &[])).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { start: 0, end: 4, len: 0, .. }), "{err:?}");
        let err = GgufFile::open(&dir.path().join("absent.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }));
        assert!(err.to_string().contains("absent.gguf"), "{err}");
    }
}
