//! GGUF, the single-file model format of llama.cpp / ggml: reading, dequantisation, and a
//! small writer.
//!
//! - [`reader`]: [`GgufFile`] memory-maps a GGUF v2/v3 file, checks every count, length and
//!   offset against the file size, and hands out metadata and tensor bytes;
//! - [`quant`]: [`GgmlType`] and the conversion of ggml's block formats to `f32`;
//! - [`matmul`]: matrix products computed on the blocks themselves (the CPU decode path);
//! - [`writer`]: [`GgufWriter`], which produces valid v3 files, so that tests can build small
//!   models and quantisation fixtures without shipping binary files.
//!
//! Layout of a file (all little-endian): the magic `GGUF`, a `u32` version, a `u64` tensor count,
//! a `u64` metadata count, the metadata key/value pairs, one descriptor per tensor, padding up to
//! `general.alignment` (32 when absent), then the data section that tensor offsets point into.

pub mod matmul;
pub mod quant;
pub mod reader;
pub mod writer;

pub use quant::{dequantize, dequantize_into, GgmlType, QuantError};
pub use reader::{GgufError, GgufFile, TensorInfo};
pub use writer::{GgufWriter, WriteError};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section and of each tensor's offset when the file does not set
/// `general.alignment`.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Type tags of metadata values, as stored in the file.
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value. Arrays are homogeneous in the file; the reader keeps them as a list of
/// values so that callers use one accessor set for scalars and elements alike.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF type tag of this value.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => value_type::U8,
            MetaValue::I8(_) => value_type::I8,
            MetaValue::U16(_) => value_type::U16,
            MetaValue::I16(_) => value_type::I16,
            MetaValue::U32(_) => value_type::U32,
            MetaValue::I32(_) => value_type::I32,
            MetaValue::U64(_) => value_type::U64,
            MetaValue::I64(_) => value_type::I64,
            MetaValue::F32(_) => value_type::F32,
            MetaValue::F64(_) => value_type::F64,
            MetaValue::Bool(_) => value_type::BOOL,
            MetaValue::String(_) => value_type::STRING,
            MetaValue::Array(_) => value_type::ARRAY,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The value as a signed 128-bit integer, for any integer type (so that range checks
    /// against narrower targets are exact).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as `f64`, for floats and integers.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_integer().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// A description for error messages: the type, and the value itself when it is short.
    pub(crate) fn describe(&self) -> String {
        match self {
            MetaValue::String(s) if s.len() <= 40 => format!("string {s:?}"),
            MetaValue::String(s) => format!("a string of {} bytes", s.len()),
            MetaValue::Array(items) => match items.first() {
                Some(first) => format!("an array of {} {}", items.len(), first.type_name()),
                None => "an empty array".to_owned(),
            },
            MetaValue::Bool(b) => format!("bool {b}"),
            MetaValue::F32(v) => format!("f32 {v}"),
            MetaValue::F64(v) => format!("f64 {v}"),
            other => match other.as_integer() {
                Some(v) => format!("{} {v}", other.type_name()),
                None => other.type_name().to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_views_are_exact_across_widths() {
        assert_eq!(MetaValue::U64(u64::MAX).as_integer(), Some(u64::MAX as i128));
        assert_eq!(MetaValue::I8(-3).as_integer(), Some(-3));
        assert_eq!(MetaValue::F32(1.5).as_integer(), None);
        assert_eq!(MetaValue::I32(7).as_f64(), Some(7.0));
        assert_eq!(MetaValue::String("x".into()).as_f64(), None);
    }

    #[test]
    fn descriptions_name_type_and_value() {
        assert_eq!(MetaValue::U32(9).describe(), "u32 9");
        assert_eq!(MetaValue::String("llama".into()).describe(), "string \"llama\"");
        assert_eq!(MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]).describe(), "an array of 2 i32");
        assert_eq!(MetaValue::Array(vec![]).describe(), "an empty array");
    }
}
