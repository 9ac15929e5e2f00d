//! Chat messages to a prompt, with the Jinja chat template a model ships.
//!
//! Templates are written for Hugging Face `transformers`, which renders them with Python's
//! jinja2 (`trim_blocks` and `lstrip_blocks` on, the loop-control extension) and a few
//! extras of its own. [`ChatTemplate`] reproduces that environment on minijinja so that a
//! prompt comes out byte for byte as the model saw prompts in training: whitespace
//! handling, `messages`/`add_generation_prompt`/`bos_token`/`eos_token`,
//! `raise_exception`, a `tojson` that writes JSON as Python's `json.dumps` does, and
//! Python's string and dict methods (`.strip()`, `.startswith()`, `.items()`...).
//!
//! Not reproduced: Python's spelling of booleans outside `{{ }}` (`true|string` gives
//! `true`, not `True`), `strftime_now` (templates that use it test `is defined` first), the
//! `{% generation %}` tag (only used for training masks), and key order in maps built by
//! a template, which minijinja sorts.

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State};
use serde::{Deserialize, Serialize};

/// ChatML, for models that bring no template: the format of SmolLM, Qwen and many others.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The name the template is registered under; shows in error messages.
const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others, such as `tool`).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A message as templates see it: a map whose keys come in transformers' order (`role`
/// first) for `.items()` and `tojson`, where a serialised struct would have them sorted.
#[derive(Debug)]
struct MessageValue(ChatMessage);

impl Object for MessageValue {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is not valid Jinja (or uses something minijinja lacks).
    #[error("the chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception`: it rejects these messages (for example
    /// roles that do not alternate). The message is the template's own.
    #[error("the chat template rejects these messages: {message}")]
    Raised { message: String },
    /// Rendering failed otherwise.
    #[error("the chat template failed: {0}")]
    Render(String),
}

/// Marks an error raised by the template's `raise_exception`, to tell it apart from
/// rendering failures after minijinja has wrapped it.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// A compiled chat template with the model's BOS/EOS text. Rendering is read-only, so one
/// instance serves all requests.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos_token", &self.bos_token).field("eos_token", &self.eos_token).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are the texts of those tokens
    /// (`<|im_start|>`), which templates write into the prompt themselves.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // What transformers sets on its jinja2 environment.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        // jinja2 builtins that minijinja keeps in its contrib crate (truncate, joiner...).
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.set_formatter(python_formatter);
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(Self { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// Renders `messages`; with `add_generation_prompt`, ends with the opening of an
    /// assistant turn for the model to complete.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| TemplateError::Render(e.to_string()))?;
        let context = minijinja::context! {
            messages => messages.iter().map(|m| Value::from_object(MessageValue(m.clone()))).collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            // transformers passes these as None when unused, so templates test them with
            // `is not none`; left undefined they would pass that test.
            tools => Value::from(()),
            documents => Value::from(()),
        };
        template.render(context).map_err(classify)
    }
}

fn classify(err: Error) -> TemplateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<RaisedByTemplate>() {
            return TemplateError::Raised { message: raised.0.clone() };
        }
        cause = e.source();
    }
    TemplateError::Render(err.to_string())
}

/// Prints booleans and none as Python does (`True`, `None`); minijinja would write
/// `true` and `none`. Only `{{ }}` output is affected, not `|string` or `~`.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Bool => Ok(out.write_str(if value.is_true() { "True" } else { "False" })?),
        ValueKind::None => Ok(out.write_str("None")?),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedByTemplate(message)))
}

/// `tojson` as transformers defines it: `json.dumps` with non-ASCII kept as is and no
/// HTML escaping (jinja2's and minijinja's own escape `<`, `>`, `&`, `'`), Python's
/// separators (`", "` and `": "`), and its keyword arguments `indent`, `separators`,
/// `ensure_ascii` and `sort_keys` (maps are always sorted here).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let _sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
        // Python drops the space after commas when indenting, the newline takes its place.
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let formatter = PythonJson { indent: indent.map(|n| " ".repeat(n)), item_sep, key_sep, depth: 0, has_value: false };
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut serializer).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let json = String::from_utf8(out).expect("serde_json writes UTF-8");
    Ok(Value::from(if ensure_ascii == Some(true) { escape_non_ascii(&json) } else { json }))
}

/// `\uXXXX` escapes for every non-ASCII character, as surrogate pairs above U+FFFF.
/// Applied to finished JSON, where such characters can only sit inside strings.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A serde_json formatter laying JSON out as Python's `json.dumps` does.
struct PythonJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    depth: usize,
    /// Whether the container being written has a value yet: an empty one stays `[]`.
    has_value: bool,
}

impl PythonJson {
    fn open<W: ?Sized + std::io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + std::io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }

    fn separate<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(self.item_sep.as_bytes())?;
        }
        self.newline(w)
    }

    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.depth {
                w.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.separate(w, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.separate(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(self.key_sep.as_bytes())
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(messages, add_generation_prompt)
    }

    fn user(content: &str) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    #[test]
    fn chatml_fallback() {
        let messages = [ChatMessage::new("system", "Be brief."), user("Hi"), ChatMessage::new("assistant", "Hello!")];
        assert_eq!(
            render(CHATML_TEMPLATE, &messages, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(render(CHATML_TEMPLATE, &[user("Hi")], false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn whitespace_follows_jinja2_trim_and_lstrip_blocks() {
        // Expected output rendered by Python jinja2 3.1 with trim_blocks and lstrip_blocks.
        let source = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[U] {{ m.content }}\n    {% else %}\n[A] {{ m.content }}{{ eos_token }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n[A]\n{% endif %}\n";
        let messages = [user("Hi"), ChatMessage::new("assistant", "Yo")];
        assert_eq!(render(source, &messages, true).unwrap(), "<s>\n[U] Hi\n[A] Yo</s>\n[A]\n");
    }

    #[test]
    fn raise_exception_fails_with_its_message() {
        let source = "{% for m in messages %}{% if m.role == 'system' %}\
                      {{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
        assert_eq!(render(source, &[user("ok")], false).unwrap(), "ok");
        match render(source, &[ChatMessage::new("system", "x")], false) {
            Err(TemplateError::Raised { message }) => assert_eq!(message, "System role not supported"),
            other => panic!("expected Raised, got {other:?}"),
        }
    }

    #[test]
    fn python_string_and_dict_methods() {
        let source = "{% for m in messages %}{{ m.content.strip().title() }}|{{ m.content.startswith('  he') }}|\
                      {{ m.content.split()|length }}|{% for k, v in m.items() %}{{ k }}={{ v|trim }};{% endfor %}\
                      {{ m.get('name', 'anon') }}{% endfor %}";
        assert_eq!(
            render(source, &[user("  hello world ")], false).unwrap(),
            "Hello World|True|2|role=user;content=hello world;anon"
        );
    }

    #[test]
    fn loop_controls_and_loop_variables() {
        let source = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
                      {% if loop.index > 3 %}{% break %}{% endif %}{{ loop.index0 }}{{ m.content }}\
                      {% if not loop.last %},{% endif %}{% endfor %}";
        let messages = [ChatMessage::new("system", "s"), user("a"), user("b"), user("c"), user("d")];
        assert_eq!(render(source, &messages, false).unwrap(), "1a,2b,");
    }

    #[test]
    fn booleans_and_none_print_as_in_python() {
        assert_eq!(
            render("{{ true }} {{ none }} {{ 1.0 }} {{ undefined_thing }}|", &[], false).unwrap(),
            "True None 1.0 |"
        );
    }

    #[test]
    fn tools_and_documents_are_none_as_in_transformers() {
        let source = "{% if tools is not none %}tools{% endif %}{% if documents is none %}no docs{% endif %}";
        assert_eq!(render(source, &[], false).unwrap(), "no docs");
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        // Expected strings are Python's json.dumps(..., ensure_ascii=False) output.
        let source = "{{ {'a': 'é', 'b': [1, 'x<y & z']}|tojson }}";
        assert_eq!(render(source, &[], false).unwrap(), r#"{"a": "é", "b": [1, "x<y & z"]}"#);
        let indented = "{{ {'a': [1, 2], 'e': []}|tojson(indent=2) }}";
        assert_eq!(render(indented, &[], false).unwrap(), "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"e\": []\n}");
        let ascii = "{{ 'é😀'|tojson(ensure_ascii=true) }}";
        assert_eq!(render(ascii, &[], false).unwrap(), r#""\u00e9\ud83d\ude00""#);
        let compact = "{{ [1, {'k': 'v'}]|tojson(separators=[',', ':']) }}";
        assert_eq!(render(compact, &[], false).unwrap(), r#"[1,{"k":"v"}]"#);
        assert_eq!(
            render("{{ messages|tojson }}", &[user("q\"\n")], false).unwrap(),
            r#"[{"role": "user", "content": "q\"\n"}]"#
        );
    }

    #[test]
    fn syntax_errors_and_render_errors_are_told_apart() {
        assert!(matches!(ChatTemplate::new("{% for %}", "", ""), Err(TemplateError::Syntax(_))));
        assert!(matches!(
            render("{{ messages[0].content.nope.deeper }}", &[user("x")], false),
            Err(TemplateError::Render(_))
        ));
    }
}
