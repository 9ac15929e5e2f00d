//! Size limits on what a request may ask the service to store (`[limits]` in the
//! config). Without them one upload could exhaust memory: a document's title and
//! metadata are copied into every one of its chunks, and a job's record keeps the whole
//! text until it ends. Every check names the field and the config key, and a refused
//! request stores nothing.

use serde::Deserialize;
use serde_json::Value;

use super::service::MemoryError;

/// See the module documentation; `config/default.toml` documents each key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_text_bytes: usize,
    pub message_bytes: usize,
    pub metadata_bytes: usize,
    pub metadata_depth: usize,
    pub title_bytes: usize,
    pub document_text_bytes: usize,
    pub document_chunks: usize,
    pub import_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_text_bytes: 64 * 1024,
            message_bytes: 32 * 1024,
            metadata_bytes: 16 * 1024,
            metadata_depth: 8,
            title_bytes: 1024,
            document_text_bytes: 16 * 1024 * 1024,
            document_chunks: 10_000,
            import_messages: 1000,
        }
    }
}

/// A 413 naming the field, its size, the limit and the key that sets it.
pub fn too_large(field: &'static str, size: usize, limit: usize, key: &str) -> MemoryError {
    MemoryError::TooLarge {
        field,
        message: format!("{field} is {size} bytes; the limit is {limit} bytes (limits.{key})"),
    }
}

impl Limits {
    /// A text field within `limit` bytes (`key` names the config key).
    pub fn check_len(&self, field: &'static str, text: &str, limit: usize, key: &str) -> Result<(), MemoryError> {
        if text.len() > limit {
            return Err(too_large(field, text.len(), limit, key));
        }
        Ok(())
    }

    /// A memory's text: not blank, within `memory_text_bytes`.
    pub fn memory_text(&self, field: &'static str, text: &str) -> Result<(), MemoryError> {
        if text.trim().is_empty() {
            return Err(MemoryError::Invalid(format!("{field} is empty")));
        }
        self.check_len(field, text, self.memory_text_bytes, "memory_text_bytes")
    }

    /// Metadata: null or a JSON object, serialised within `metadata_bytes`, nested no
    /// deeper than `metadata_depth`.
    pub fn metadata(&self, field: &'static str, value: &Value) -> Result<(), MemoryError> {
        match value {
            Value::Null => return Ok(()),
            Value::Object(_) => {}
            _ => return Err(MemoryError::Invalid(format!("{field} must be a JSON object"))),
        }
        let depth = depth(value);
        if depth > self.metadata_depth {
            return Err(MemoryError::Invalid(format!(
                "{field} is nested {depth} levels deep; the limit is {} (limits.metadata_depth)",
                self.metadata_depth
            )));
        }
        let size = value.to_string().len();
        if size > self.metadata_bytes {
            return Err(too_large(field, size, self.metadata_bytes, "metadata_bytes"));
        }
        Ok(())
    }
}

/// Nesting depth of a JSON value: 0 for a scalar, 1 for a flat object or array.
/// Iterative, so a hostile value cannot overflow the stack here.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Object(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn metadata_is_bounded_in_size_and_depth_and_names_the_limit() {
        let limits = Limits { metadata_bytes: 64, metadata_depth: 3, ..Limits::default() };
        assert!(limits.metadata("metadata", &Value::Null).is_ok());
        assert!(limits.metadata("metadata", &json!({"a": {"b": [1]}})).is_ok());
        let deep = limits.metadata("metadata", &json!({"a": {"b": {"c": {"d": 1}}}})).unwrap_err();
        assert!(matches!(&deep, MemoryError::Invalid(m) if m.contains("limits.metadata_depth")), "{deep}");
        let big = limits.metadata("metadata", &json!({"a": "x".repeat(100)})).unwrap_err();
        match big {
            MemoryError::TooLarge { field, message } => {
                assert_eq!(field, "metadata");
                assert!(message.contains("limits.metadata_bytes"), "{message}");
            }
            other => panic!("{other}"),
        }
        assert!(limits.metadata("metadata", &json!([1, 2])).is_err());
    }

    #[test]
    fn depth_counts_levels() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [{"b": 1}]})), 3);
    }

    #[test]
    fn texts_are_checked_against_their_limit() {
        let limits = Limits { memory_text_bytes: 4, ..Limits::default() };
        assert!(limits.memory_text("text", "abcd").is_ok());
        assert!(matches!(limits.memory_text("text", "abcde"), Err(MemoryError::TooLarge { field: "text", .. })));
        assert!(matches!(limits.memory_text("text", "  "), Err(MemoryError::Invalid(_))));
    }
}
