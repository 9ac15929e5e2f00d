//! `/openapi.json` and `/docs` on the real server: the document is valid OpenAPI (checked
//! by the `openapi-spec-validator` package of the test venv, run through ENGRAM_PYTHON);
//! every documented route and method is served and every other method on those paths is
//! refused; real responses — successes, errors, stream chunks — validate against the
//! schemas documented for their status, with undocumented fields refused; and the docs
//! page, loaded in headless Chromium, shows the routes.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::server::Server;
use serde_json::{json, Value};

const ACME: Option<&str> = Some("acme-key");

fn python() -> String {
    std::env::var("ENGRAM_PYTHON")
        .expect("ENGRAM_PYTHON names the venv's python with openapi-spec-validator; run the tests with `make test`")
}

/// Runs `script` with `input` as JSON on stdin; returns its stdout, failing the test
/// with its stderr when it fails.
fn run_python(script: &str, input: &Value) -> String {
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ENGRAM_AUTH__KEYS", "acme=acme-key")]);
    server.wait_ready();
    (dir, server)
}

/// The document, read without a key (it says nothing a key protects).
fn document(server: &Server) -> Value {
    let (status, doc) = server.call("GET", "/openapi.json", None, None);
    assert_eq!(status, 200, "{doc}");
    doc
}

/// The methods the document gives each path.
fn documented(doc: &Value) -> Vec<(String, BTreeSet<String>)> {
    let methods = ["get", "post", "put", "patch", "delete"];
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let ms = methods.iter().filter(|m| item.get(**m).is_some()).map(|m| m.to_uppercase()).collect();
            (path.clone(), ms)
        })
        .collect()
}

const VALIDATE_DOCUMENT: &str = r#"
import json, sys
from openapi_spec_validator import validate
doc = json.load(sys.stdin)
validate(doc)  # raises, naming the fault, when invalid
print(doc["openapi"])
"#;

#[test]
fn the_document_is_valid_openapi_and_matches_the_routes_served() {
    let (_dir, server) = start();
    let doc = document(&server);
    let version = run_python(VALIDATE_DOCUMENT, &doc);
    assert_eq!(version.trim(), "3.1.0");

    // Every documented path and method is served; every other method on it is a 405.
    // (Routes are registered through utoipa-axum, which documents each as it adds it;
    // this checks the outcome from outside.)
    let routes = documented(&doc);
    assert!(routes.len() >= 19, "{routes:?}");
    for (path, methods) in &routes {
        let concrete = path.replace("{id}", "01JAAAAAAAAAAAAAAAAAAAAAAA");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let body = (method != "GET" && method != "DELETE").then(|| json!({}));
            let (status, answer) = server.call(method, &concrete, ACME, body.as_ref());
            if methods.contains(method) {
                assert_ne!(status, 405, "{method} {path} is documented but refused: {answer}");
                assert_ne!(answer["error"]["message"], "no such route", "{method} {path}");
            } else {
                assert_eq!(status, 405, "{method} {path} is served but not documented: {answer}");
            }
        }
    }
    // Every route the server has is in the document: each route the README and the
    // tests use, named here, must appear (a new route goes in both).
    let served = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/v1/models",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/chat",
        "/v1/chat/completions",
        "/v1/memories",
        "/v1/memories/search",
        "/v1/memories/{id}",
        "/v1/memories/{id}/history",
        "/v1/documents",
        "/v1/documents/{id}",
        "/v1/jobs/{id}",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/messages",
        "/mcp",
    ];
    let paths: BTreeSet<&str> = routes.iter().map(|(p, _)| p.as_str()).collect();
    for path in served {
        assert!(paths.contains(path), "{path} is served but not documented");
    }
    // An unknown path is the fallback's 404, so the probes above mean something.
    let (status, answer) = server.call("GET", "/v1/nothing-here", ACME, None);
    assert_eq!((status, answer["error"]["message"].as_str()), (404, Some("no such route")));

    // Keyed routes say so, open ones need no key, and every operation documents errors.
    assert_eq!(doc["security"], json!([{ "api_key": [] }]));
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    for (path, methods) in &routes {
        for m in methods {
            let op = &doc["paths"][path][m.to_lowercase()];
            if path.starts_with("/v1/") || path == "/mcp" {
                assert!(op.get("security").is_none(), "{m} {path} inherits the key requirement");
                assert!(op["responses"].get("401").is_some(), "{m} {path}: no 401");
            } else {
                assert_eq!(op["security"], json!([]), "{m} {path} needs no key");
                let (status, _) = server.call(m, path, None, None);
                assert_eq!(status, 200, "{m} {path} without a key");
            }
            assert!(op["operationId"].is_string() || path == "/docs", "{m} {path}");
        }
    }
    let error = &doc["components"]["schemas"]["ErrorResponse"];
    assert!(error.is_object(), "{error}");

    // `engram openapi` prints the same document, without a server.
    let out = Command::new(common::engram_bin()).arg("openapi").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, doc);
}

/// Validates each sample's body against the schema the document gives its route, method,
/// status (or `default`) and content type. Object schemas are closed first
/// (`unevaluatedProperties: false`), so a field the document does not name fails too.
/// Prints one line per failure.
const VALIDATE_SAMPLES: &str = r#"
import copy, json, sys
from jsonschema import Draft202012Validator
data = json.load(sys.stdin)
doc = data["doc"]
components = copy.deepcopy(doc["components"])

# Schemas used as allOf members are checked with their siblings; closing them alone
# would refuse the siblings' fields.
in_all_of = set()
def scan(node, inside=False):
    if isinstance(node, dict):
        if inside and "$ref" in node:
            in_all_of.add(node["$ref"].rsplit("/", 1)[-1])
        for k, v in node.items():
            scan(v, inside or k == "allOf")
    elif isinstance(node, list):
        for v in node:
            scan(v, inside)
scan(components)

def close(node, top=True):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "allOf":
                for member in v:
                    close(member, top=False)
            else:
                close(v, top=True)
        if top and ("properties" in node or "allOf" in node) and node.get("type") in ("object", None):
            if "additionalProperties" not in node:
                node["unevaluatedProperties"] = False
    elif isinstance(node, list):
        for v in node:
            close(v, top)
for name, schema in components["schemas"].items():
    if name not in in_all_of:
        close(schema)
    else:
        for v in schema.values():
            close(v)

failures = []
for s in data["samples"]:
    op = doc["paths"][s["route"]][s["method"].lower()]
    responses = op["responses"]
    response = responses.get(str(s["status"])) or responses.get("default")
    where = f'{s["method"]} {s["route"]} {s["status"]} ({s["content"]})'
    if response is None:
        failures.append(f"{where}: status not documented")
        continue
    content = response.get("content", {}).get(s["content"])
    if content is None:
        failures.append(f"{where}: content type not documented")
        continue
    schema = dict(copy.deepcopy(content["schema"]))
    schema["components"] = components
    errors = sorted(Draft202012Validator(schema).iter_errors(s["body"]), key=str)
    for e in errors[:3]:
        failures.append(f"{where}: {e.message} at {list(e.absolute_path)}")
print(json.dumps({"checked": len(data["samples"]), "failures": failures}))
"#;

/// A response to check: the documented route it answers, its method, status and body.
struct Sample {
    route: &'static str,
    method: &'static str,
    status: u16,
    body: Value,
    content: &'static str,
}

impl Sample {
    fn json(&self) -> Value {
        json!({ "route": self.route, "method": self.method, "status": self.status, "body": self.body,
                "content": self.content })
    }
}

/// The events of a server-sent event stream, as (name, data as JSON), but `[DONE]`: one
/// per block of lines ended by a blank line, as the specification dispatches them.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let (mut event, mut data) = (None::<String>, None::<String>);
    for line in text.lines().chain([""]) {
        if line.is_empty() {
            if let Some(d) = data.take().filter(|d| d != "[DONE]") {
                let value = serde_json::from_str(&d).unwrap_or_else(|e| panic!("{d}: {e}"));
                out.push((event.take().unwrap_or_else(|| "message".into()), value));
            }
            event = None;
        } else if let Some(name) = line.strip_prefix("event:") {
            event = Some(name.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            data = Some(d.trim().to_owned());
        }
    }
    out
}

#[test]
fn real_responses_match_their_documented_schemas() {
    let (_dir, server) = start();
    let doc = document(&server);
    let mut samples = Vec::new();
    let mut call = |route: &'static str, method: &'static str, path: &str, key, body: Option<Value>| {
        let (status, answer) = server.call(method, path, key, body.as_ref());
        samples.push(Sample { route, method, status, body: answer.clone(), content: "application/json" });
        (status, answer)
    };

    let add = json!({ "user_id": "ada", "text": "Ada lives in Lyon.", "metadata": { "topic": "home" },
                      "created_at": "2025-03-01T12:00:00Z" });
    let (status, memory) = call("/v1/memories", "POST", "/v1/memories", ACME, Some(add.clone()));
    assert_eq!(status, 201, "{memory}");
    let id = memory["id"].as_str().unwrap().to_owned();
    assert_eq!(call("/v1/memories", "POST", "/v1/memories", ACME, Some(add)).0, 200);
    let moved = json!({ "user_id": "ada", "text": "Ada moved to Porto.", "supersedes": [id] });
    let (status, newer) = call("/v1/memories", "POST", "/v1/memories", ACME, Some(moved));
    assert_eq!(status, 201, "{newer}");
    let item = format!("/v1/memories/{id}");
    assert_eq!(call("/v1/memories/{id}", "GET", &item, ACME, None).0, 200);
    let edit = json!({ "text": "Ada lived in Lyon.", "expires_at": 4102444800000_i64 });
    assert_eq!(call("/v1/memories/{id}", "PATCH", &item, ACME, Some(edit)).0, 200);
    let (status, history) = call("/v1/memories/{id}/history", "GET", &format!("{item}/history"), ACME, None);
    assert_eq!((status, history["versions"].as_array().map(Vec::len)), (200, Some(2)), "{history}");
    let list = "/v1/memories?user_id=ada&include_superseded=true&limit=1";
    let (status, page) = call("/v1/memories", "GET", list, ACME, None);
    assert_eq!(status, 200);
    assert!(page["next_cursor"].is_string(), "{page}");
    let search = json!({ "query": "Where does Ada live?", "user_id": "ada", "include_superseded": true,
                         "filters": { "created_after": 0 } });
    let (status, found) = call("/v1/memories/search", "POST", "/v1/memories/search", ACME, Some(search));
    assert_eq!((status, found["results"].as_array().map(Vec::len)), (200, Some(2)), "{found}");

    let chat = json!({ "user_id": "ada", "message": "Where do I live?", "max_tokens": 6, "temperature": 0 });
    let (status, reply) = call("/v1/chat", "POST", "/v1/chat", ACME, Some(chat));
    assert_eq!(status, 200, "{reply}");
    let session = reply["session_id"].as_str().unwrap().to_owned();
    assert_eq!(call("/v1/sessions/{id}", "GET", &format!("/v1/sessions/{session}"), ACME, None).0, 200);
    let import = json!({ "user_id": "ada", "messages": [
        { "role": "user", "content": "I adopted a cat.", "created_at": 1700000000000_i64 },
        { "role": "assistant", "content": "Congratulations!" } ] });
    let (status, imported) =
        call("/v1/sessions/{id}/messages", "POST", "/v1/sessions/s-import/messages", ACME, Some(import));
    assert_eq!(status, 201, "{imported}");

    let openai = json!({ "messages": [{ "role": "user", "content": "Hi" }], "user": "ada", "max_tokens": 4,
                         "temperature": 0, "logprobs": true, "top_logprobs": 2 });
    assert_eq!(call("/v1/chat/completions", "POST", "/v1/chat/completions", ACME, Some(openai)).0, 200);
    let completion = json!({ "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "logprobs": 2 });
    let (status, answer) = call("/v1/completions", "POST", "/v1/completions", ACME, Some(completion));
    assert_eq!(status, 200, "{answer}");
    let embed = json!({ "input": ["one", "two"], "encoding_format": "base64" });
    assert_eq!(call("/v1/embeddings", "POST", "/v1/embeddings", ACME, Some(embed)).0, 200);
    assert_eq!(call("/v1/embeddings", "POST", "/v1/embeddings", ACME, Some(json!({ "input": "one" }))).0, 200);
    assert_eq!(call("/v1/models", "GET", "/v1/models", ACME, None).0, 200);

    let doc_body = json!({ "title": "Harbour notes", "text": "The harbour opens at dawn.", "user_id": "ada" });
    let (status, document) = call("/v1/documents", "POST", "/v1/documents", ACME, Some(doc_body));
    assert_eq!(status, 201, "{document}");
    let doc_path = format!("/v1/documents/{}", document["id"].as_str().unwrap());
    assert_eq!(call("/v1/documents/{id}", "GET", &doc_path, ACME, None).0, 200);
    assert_eq!(call("/v1/documents", "GET", "/v1/documents?user_id=ada", ACME, None).0, 200);

    assert_eq!(call("/healthz", "GET", "/healthz", None, None).0, 200);
    assert_eq!(call("/readyz", "GET", "/readyz", None, None).0, 200);
    assert_eq!(call("/v1/memories", "DELETE", "/v1/memories?user_id=ada", ACME, None).0, 200);

    // Errors: each in the documented error shape.
    assert_eq!(call("/v1/memories/{id}", "GET", &item, ACME, None).0, 404);
    assert_eq!(call("/v1/memories/{id}", "GET", &item, None, None).0, 401);
    assert_eq!(call("/v1/memories", "POST", "/v1/memories", ACME, Some(json!({ "text": "x" }))).0, 400);
    assert_eq!(call("/v1/jobs/{id}", "GET", "/v1/jobs/nope", ACME, None).0, 404);
    let huge = json!({ "user_id": "ada", "text": "word ".repeat(300_000) });
    assert_eq!(call("/v1/memories", "POST", "/v1/memories", ACME, Some(huge)).0, 413);

    // Streams: each chunk validates against the stream's documented schema.
    let streams = [
        (
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": "Hi" }], "user": "bo",
            "max_tokens": 3, "stream": true, "stream_options": { "include_usage": true } }),
        ),
        ("/v1/completions", json!({ "prompt": "Once", "max_tokens": 3, "stream": true, "echo": true })),
        ("/v1/chat", json!({ "user_id": "bo", "message": "Hi", "max_tokens": 3, "stream": true })),
    ];
    for (route, body) in streams {
        let (status, text) = server.post_text_with_key(route, ACME, &body);
        assert_eq!(status, 200, "{text}");
        let events = sse_events(&text);
        assert!(events.len() >= 2, "{text}");
        for (event, data) in events {
            match (route, event.as_str()) {
                // /v1/chat's pieces are `{"delta": …}`; its `done` event is the reply object.
                ("/v1/chat", "message") => assert!(data["delta"].is_string(), "{data}"),
                ("/v1/chat", "done") => assert!(data["reply"].is_string(), "{data}"),
                (_, "message") => {}
                (_, other) => panic!("{route}: unexpected event `{other}`: {data}"),
            }
            samples.push(Sample { route, method: "POST", status, body: data, content: "text/event-stream" });
        }
    }

    let input = json!({ "doc": doc, "samples": samples.iter().map(Sample::json).collect::<Vec<_>>() });
    let result: Value = serde_json::from_str(&run_python(VALIDATE_SAMPLES, &input)).unwrap();
    assert_eq!(result["checked"], samples.len());
    assert_eq!(result["failures"], json!([]), "responses that do not match the document");
}

/// The validator is not lenient: a body with a field the document does not name, or a
/// field of the wrong type, fails.
#[test]
fn the_sample_check_refuses_undocumented_fields_and_wrong_types() {
    let (_dir, server) = start();
    let doc = document(&server);
    let healthy = json!({ "status": "ok" });
    let extra = json!({ "status": "ok", "surprise": 1 });
    let nested_extra = json!({ "error": { "code": "not_found", "type": "invalid_request_error", "param": null,
                                          "message": "x", "surprise": true } });
    let wrong_type = json!({ "results": [{ "id": "x", "kind": "fact", "score": "high", "text": "t",
        "metadata": {}, "created_at": null, "source": null, "current": true, "valid_from": null,
        "valid_to": null, "superseded_by": null, "supersedes": [] }] });
    let unknown_code = json!({ "error": { "code": "teapot", "type": "x", "param": null, "message": "x" } });
    let sample = |route: &str, method: &str, status: u16, body: &Value| json!({ "route": route, "method": method, "status": status, "body": body, "content": "application/json" });
    let input = json!({ "doc": doc, "samples": [
        sample("/healthz", "GET", 200, &healthy),
        sample("/healthz", "GET", 200, &extra),
        sample("/v1/memories/{id}", "GET", 404, &nested_extra),
        sample("/v1/memories/search", "POST", 200, &wrong_type),
        sample("/v1/memories/{id}", "GET", 404, &unknown_code),
    ]});
    let result: Value = serde_json::from_str(&run_python(VALIDATE_SAMPLES, &input)).unwrap();
    let failures: Vec<String> =
        result["failures"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
    let count =
        |prefix: &str, needle: &str| failures.iter().filter(|f| f.starts_with(prefix) && f.contains(needle)).count();
    // The well-formed /healthz body passes; the one with an extra field does not.
    assert_eq!(failures.iter().filter(|f| f.starts_with("GET /healthz")).count(), 1, "{failures:#?}");
    assert_eq!(count("GET /healthz", "'surprise' was unexpected"), 1, "{failures:#?}");
    assert_eq!(count("GET /v1/memories/{id} 404", "'surprise' was unexpected"), 1, "{failures:#?}");
    assert_eq!(count("POST /v1/memories/search", "'high' is not of type 'number'"), 1, "{failures:#?}");
    assert_eq!(count("GET /v1/memories/{id} 404", "'teapot' is not one of"), 1, "{failures:#?}");
}

/// Chromium from Debian, installed by `make test` (ENGRAM_CHROMIUM overrides the path).
fn chromium() -> String {
    let path = std::env::var("ENGRAM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(std::path::Path::new(&path).exists(), "{path} is missing; `make test` installs Debian's chromium");
    path
}

/// Checks a PNG: its size, and that it is not one flat colour (a blank page). Prints
/// `width height colours dark_share`.
const READ_PNG: &str = r#"
import json, struct, sys, zlib
path = json.load(sys.stdin)
raw = open(path, "rb").read()
assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, chunks, idat = 8, {}, b""
while pos < len(raw):
    n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
    body = raw[pos + 8:pos + 8 + n]
    if kind == b"IDAT":
        idat += body
    chunks.setdefault(kind, body)
    pos += 12 + n
w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
assert depth == 8 and colour in (2, 6), (depth, colour)
bpp = 3 if colour == 2 else 4
data = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
colours, dark = set(), 0
for y in range(h):
    f = data[y * (stride + 1)]
    line = bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0
        b = prev[x]
        c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    prev = line
    for x in range(0, stride, bpp * 4):
        px = tuple(line[x:x + 3])
        colours.add(px)
        dark += sum(px) < 200
print(w, h, len(colours), dark / (h * w / 4))
"#;

#[test]
fn the_docs_page_shows_the_routes_in_a_real_browser() {
    let (dir, server) = start();
    let doc = document(&server);
    let url = format!("{}/docs/", server.base);
    let browser = |extra: &[&str]| {
        let profile = dir.path().join(format!("chromium-{}", extra.len()));
        let out = Command::new(chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
            .arg(format!("--user-data-dir={}", profile.display()))
            // Swagger UI fetches /openapi.json and renders it: give it the time.
            .args(["--virtual-time-budget=20000", "--window-size=1280,1600"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // What the browser rendered: every documented route, with its method, and the title.
    let dom = browser(&["--dump-dom"]);
    assert!(dom.contains("engram"), "the title is missing");
    for (path, methods) in documented(&doc) {
        if path == "/docs" {
            continue;
        }
        assert!(dom.contains(&format!("data-path=\"{path}\"")), "{path} is not on the page");
        for m in methods {
            let op = &doc["paths"][&path][m.to_lowercase()];
            let id = format!(
                "id=\"operations-{}-{}\"",
                op["tags"][0].as_str().unwrap(),
                op["operationId"].as_str().unwrap()
            );
            assert!(dom.contains(&id), "{m} {path}: no operation block {id}");
        }
    }
    // Everything the page loaded came from this server: no address elsewhere.
    for attr in ["src=\"http", "href=\"http"] {
        for (at, _) in dom.match_indices(attr) {
            let rest = &dom[at + attr.len() - 4..];
            assert!(rest.starts_with(&server.base), "the page refers elsewhere: {}", &rest[..rest.len().min(80)]);
        }
    }

    // The screenshot: a page-sized picture with text on it, not a blank or error page.
    let shot = dir.path().join("docs.png");
    browser(&[&format!("--screenshot={}", shot.display())]);
    let stats = run_python(READ_PNG, &json!(shot.to_str().unwrap()));
    let fields: Vec<f64> = stats.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!((fields[0], fields[1]), (1280.0, 1600.0), "{stats}");
    assert!(fields[2] > 20.0, "a nearly flat picture: {stats}");
    assert!(fields[3] > 0.002 && fields[3] < 0.5, "no text-like dark pixels, or a dark page: {stats}");
}
