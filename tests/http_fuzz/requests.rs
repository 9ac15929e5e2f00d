//! Strategies for whole requests: an object body from per-field specs (each field valid,
//! hostile, of the wrong type, null or missing), path ids and query strings with
//! hostile segments, multipart forms with broken framing, and raw bodies that are not
//! JSON.

use proptest::prelude::*;
use proptest::strategy::Union;

use super::client::{Framing, Request};
use super::json::{any_type, arbitrary, hostile_number, hostile_string, J};

/// The API key the test server knows (tenant `acme`).
pub const KEY: &str = "acme-key";

/// One field of a request object: how a valid value looks, how a hostile one of the
/// right type looks, and whether the request needs it.
pub struct Field {
    pub name: &'static str,
    pub valid: BoxedStrategy<J>,
    pub hostile: BoxedStrategy<J>,
    pub required: bool,
}

pub fn required(name: &'static str, valid: BoxedStrategy<J>, hostile: BoxedStrategy<J>) -> Field {
    Field { name, valid, hostile, required: true }
}

pub fn optional(name: &'static str, valid: BoxedStrategy<J>, hostile: BoxedStrategy<J>) -> Field {
    Field { name, valid, hostile, required: false }
}

/// An object of `fields`. Weighted so that about one field per object is spoiled
/// (hostile, wrong type, null, or a required one missing): a third of the objects are
/// valid and reach the code past validation, the rest probe one thing at a time. At
/// times an unknown member is added, or a key repeated.
pub fn object(fields: Vec<Field>) -> BoxedStrategy<J> {
    let n = fields.len() as u32;
    let names: Vec<&'static str> = fields.iter().map(|f| f.name).collect();
    let members: Vec<BoxedStrategy<Option<(String, J)>>> = fields
        .into_iter()
        .map(|f| {
            let name = f.name.to_owned();
            let (keep, absent) = if f.required { (4 * n, 1) } else { (n, 3 * n) };
            let (n1, n2, n3) = (name.clone(), name.clone(), name.clone());
            prop_oneof![
                absent => Just(None),
                keep => f.valid.prop_map(move |v| Some((n1.clone(), v))),
                2 => f.hostile.prop_map(move |v| Some((n2.clone(), v))),
                1 => any_type().prop_map(move |v| Some((n3.clone(), v))),
                1 => Just(Some((name, J::Null))),
            ]
            .boxed()
        })
        .collect();
    let unknown = proptest::option::weighted(0.08, ("[a-z_]{1,12}", arbitrary()));
    let duplicate = proptest::option::weighted(0.08, (proptest::sample::select(names), any_type()));
    (members, unknown, duplicate)
        .prop_map(|(members, unknown, duplicate)| {
            let mut members: Vec<(String, J)> = members.into_iter().flatten().collect();
            if let Some((key, value)) = unknown {
                members.push((key, value));
            }
            if let Some((key, value)) = duplicate {
                members.push((key.to_owned(), value));
            }
            J::Obj(members)
        })
        .boxed()
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Path segments as sent, unencoded: what a router or decoder trips on. All are legal
/// in a request line, so it is the server's routing that answers them.
const HOSTILE_SEGMENTS: &[&str] = &[
    "..",
    ".",
    "%2e%2e",
    "%2F",
    "a%2Fb",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "a%00b",
    "%ff",
    "%C0%AE%C0%AE",
    "%",
    "%zz",
    "%25",
    "%F0%9F%99%82",
    "%uD800",
    "+",
    "*",
    "%20",
    "~",
    "-",
    ";a=b",
    "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
    "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
    "01jaaaaaaaaaaaaaaaaaaaaaaa",
    "01JAAAAAAAAAAAAAAAAAAAAAA",
    "01JAAAAAAAAAAAAAAAAAAAAAAAA",
    "OIILU000000000000000000000",
    "00000000000000000000000000",
];

/// A path segment naming a resource: an id that exists, a well-formed one that does
/// not, a hostile segment, a very long one, or any text percent-encoded.
pub fn path_id(known: Vec<String>) -> BoxedStrategy<String> {
    let mut options: Vec<(u32, BoxedStrategy<String>)> = vec![
        (2, "[0-9A-HJKMNP-TV-Z]{26}".boxed()),
        (2, proptest::sample::select(HOSTILE_SEGMENTS).prop_map(str::to_owned).boxed()),
        (1, prop_oneof![Just(1000usize), Just(60_000usize)].prop_map(|n| "A".repeat(n)).boxed()),
        (2, any::<String>().prop_map(|s| encode(&s)).boxed()),
    ];
    if !known.is_empty() {
        options.push((3, proptest::sample::select(known).boxed()));
    }
    Union::new_weighted(options).boxed()
}

/// One query parameter's value as sent: valid (encoded), hostile text (encoded), a
/// hostile number, or a raw broken escape.
pub fn query_value(valid: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![
        6 => valid.prop_map(|v| encode(&v)),
        2 => hostile_string(256, false).prop_map(|j| match j {
            J::Str(s) => encode(&s),
            other => encode(&String::from_utf8_lossy(&other.to_bytes())),
        }),
        2 => hostile_number(true).prop_map(|j| encode(&String::from_utf8_lossy(&j.to_bytes()))),
        1 => proptest::sample::select(vec!["%", "%zz", "%00", "%ff%fe", "", "a=b", "%26", "+", "++"]).prop_map(str::to_owned),
    ]
    .boxed()
}

/// A query string of `params`: each present or not, some repeated, at times a bare
/// name without `=`; a very long one now and then.
pub fn query(params: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
    let parts: Vec<BoxedStrategy<Vec<String>>> = params
        .into_iter()
        .map(|(name, valid)| {
            let value = query_value(valid);
            prop_oneof![
                3 => Just(Vec::new()),
                6 => value.clone().prop_map(move |v| vec![format!("{name}={v}")]),
                1 => (value.clone(), value).prop_map(move |(a, b)| vec![format!("{name}={a}"), format!("{name}={b}")]),
                1 => Just(vec![name.to_owned()]),
            ]
            .boxed()
        })
        .collect();
    let extra = proptest::option::weighted(
        0.1,
        prop_oneof![Just("x".repeat(50_000)), Just("&&&=&".to_owned()), "[a-z]{1,8}=[a-z]{0,8}".boxed()],
    );
    (parts, extra)
        .prop_map(|(parts, extra)| {
            let mut all: Vec<String> = parts.into_iter().flatten().collect();
            all.extend(extra);
            if all.is_empty() {
                String::new()
            } else {
                format!("?{}", all.join("&"))
            }
        })
        .boxed()
}

/// An authenticated request.
pub fn authed(method: &str, target: impl Into<String>) -> Request {
    Request::new(method, target).header("Authorization", format!("Bearer {KEY}"))
}

/// A JSON `body` sent with `method` to `target`.
pub fn json_request(
    method: &'static str,
    target: BoxedStrategy<String>,
    body: BoxedStrategy<J>,
) -> BoxedStrategy<Request> {
    (target, body).prop_map(move |(t, b)| authed(method, t).json(b.to_bytes())).boxed()
}

/// Content types a body may come with, right and wrong.
pub fn content_type() -> BoxedStrategy<Option<String>> {
    let types = vec![
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "APPLICATION/JSON",
        "application/vnd.api+json",
        "application/jsonx",
        "text/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=x",
        "*/*",
        ";;;",
        "application/",
        "json",
    ];
    prop_oneof![
        1 => Just(None),
        6 => proptest::sample::select(types).prop_map(|t| Some(t.to_owned())),
    ]
    .boxed()
}

/// Bodies that are not what the route reads: random bytes, a valid body cut short,
/// with a byte-order mark, trailing garbage, in UTF-16; each with some content type,
/// and now and then a `Content-Length` the client never completes.
pub fn raw_request(
    method: &'static str,
    target: BoxedStrategy<String>,
    valid: BoxedStrategy<J>,
) -> BoxedStrategy<Request> {
    let valid_bytes = valid.prop_map(|j| j.to_bytes());
    let body = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..512),
        3 => (valid_bytes.clone(), any::<proptest::sample::Index>()).prop_map(|(b, i)| {
            let cut = if b.is_empty() { 0 } else { i.index(b.len()) };
            b[..cut].to_vec()
        }),
        1 => valid_bytes.clone().prop_map(|b| [b"\xef\xbb\xbf".to_vec(), b].concat()),
        1 => valid_bytes.clone().prop_map(|b| [b, b" }{ trailing".to_vec()].concat()),
        1 => valid_bytes.clone().prop_map(|b| {
            String::from_utf8_lossy(&b).encode_utf16().flat_map(u16::to_le_bytes).collect()
        }),
        1 => valid_bytes,
        1 => Just(Vec::new()),
        1 => "[ -~]{0,64}".prop_map(String::into_bytes),
    ];
    let framing = prop_oneof![12 => Just(Framing::Length), 1 => Just(Framing::ShortBody)];
    (target, body, content_type(), framing)
        .prop_map(move |(t, body, ct, framing)| {
            let mut req = authed(method, t).body(body);
            if let Some(ct) = ct {
                req = req.header("Content-Type", ct);
            }
            req.framing = framing;
            req
        })
        .boxed()
}

/// Any JSON value as the body.
pub fn arbitrary_request(method: &'static str, target: BoxedStrategy<String>) -> BoxedStrategy<Request> {
    json_request(method, target, arbitrary())
}

/// One part of a multipart form.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// How a form is spoiled on the wire.
#[derive(Debug, Clone)]
pub enum FormDamage {
    None,
    /// The header names one boundary, the body uses another.
    OtherBoundary,
    /// No closing `--boundary--`.
    Unclosed,
    /// Cut at a byte.
    Truncated(proptest::sample::Index),
    /// Line ends without `\r`.
    BareNewlines,
    /// The header has no `boundary=` at all.
    NoBoundaryParam,
    /// A part with no `Content-Disposition`.
    NoDisposition,
}

fn part() -> BoxedStrategy<Part> {
    let names = prop_oneof![
        6 => Just("file".to_owned()),
        1 => Just("title".to_owned()),
        1 => Just("user_id".to_owned()),
        1 => Just("metadata".to_owned()),
        1 => "[a-z]{0,8}",
        1 => Just("fi\"le".to_owned()),
    ];
    let file_names = proptest::option::weighted(
        0.85,
        prop_oneof![
            4 => proptest::sample::select(vec!["a.txt", "notes.md", "page.html", "paper.pdf", "x.htm", "README", "a.exe", "", ".txt", "../../etc/passwd.txt", "日本語.txt", "a\u{0}.txt", "a.TXT", "x.PDF"]).prop_map(str::to_owned),
            1 => "[a-z.]{0,12}\\.(txt|md|html|pdf)",
            1 => Just(format!("{}.txt", "n".repeat(5000))),
        ],
    );
    let content_types = proptest::option::weighted(
        0.5,
        proptest::sample::select(vec![
            "text/plain",
            "text/html",
            "application/pdf",
            "application/octet-stream",
            "image/png",
            "text/plain; charset=utf-16",
            "garbage",
            "",
        ])
        .prop_map(str::to_owned),
    );
    let data = prop_oneof![
        4 => "[ -~\n]{0,400}".prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..600),
        1 => Just(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF".to_vec()),
        1 => Just(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\nxref\n0 999999999\n".to_vec()),
        1 => Just(b"<html><body><h1>T</h1><p>Para &amp; &#x0; &#xFFFFFF; <script>x</script></p></body></html>".to_vec()),
        1 => Just(format!("<div>{}</div>", "<b>".repeat(5000)).into_bytes()),
        1 => Just(vec![0xff, 0xfe, b'a', 0, b'b', 0]),
        1 => Just(b"{\"not\": \"json\"".to_vec()),
    ];
    (names, file_names, content_types, data)
        .prop_map(|(name, file_name, content_type, data)| Part { name, file_name, content_type, data })
        .boxed()
}

fn form_damage() -> BoxedStrategy<FormDamage> {
    prop_oneof![
        10 => Just(FormDamage::None),
        1 => Just(FormDamage::OtherBoundary),
        1 => Just(FormDamage::Unclosed),
        2 => any::<proptest::sample::Index>().prop_map(FormDamage::Truncated),
        1 => Just(FormDamage::BareNewlines),
        1 => Just(FormDamage::NoBoundaryParam),
        1 => Just(FormDamage::NoDisposition),
    ]
    .boxed()
}

/// Renders a form; returns the body and the `Content-Type` header.
pub fn render_form(boundary: &str, parts: &[Part], damage: &FormDamage) -> (Vec<u8>, String) {
    let used =
        if matches!(damage, FormDamage::OtherBoundary) { format!("{boundary}-other") } else { boundary.to_owned() };
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{used}\r\n").as_bytes());
        if !matches!(damage, FormDamage::NoDisposition) {
            let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", part.name);
            if let Some(f) = &part.file_name {
                disposition.push_str(&format!("; filename=\"{f}\""));
            }
            body.extend_from_slice(disposition.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        if let Some(ct) = &part.content_type {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&part.data);
        body.extend_from_slice(b"\r\n");
    }
    if !matches!(damage, FormDamage::Unclosed) {
        body.extend_from_slice(format!("--{used}--\r\n").as_bytes());
    }
    match damage {
        FormDamage::Truncated(at) if !body.is_empty() => body.truncate(at.index(body.len())),
        FormDamage::BareNewlines => body = String::from_utf8_lossy(&body).replace("\r\n", "\n").into_bytes(),
        _ => {}
    }
    let header = match damage {
        FormDamage::NoBoundaryParam => "multipart/form-data".to_owned(),
        _ => format!("multipart/form-data; boundary={boundary}"),
    };
    (body, header)
}

/// Multipart uploads to `/v1/documents`: a few parts (mostly a `file`), boundaries
/// plain, long, or quoted, and now and then broken framing.
pub fn multipart_request() -> BoxedStrategy<Request> {
    let boundary = prop_oneof![
        6 => "[a-zA-Z0-9]{1,40}",
        1 => Just("b".repeat(200)),
        1 => Just("\"quoted boundary\"".to_owned()),
        1 => Just("a;b=c".to_owned()),
    ];
    (boundary, proptest::collection::vec(part(), 0..4), form_damage())
        .prop_map(|(boundary, parts, damage)| {
            let (body, content_type) = render_form(&boundary, &parts, &damage);
            authed("POST", "/v1/documents").header("Content-Type", content_type).body(body)
        })
        .boxed()
}
