//! What every response must be, whatever was asked: an answer (not a dropped connection
//! or a hang), never a 5xx, a 4xx in the API's JSON error shape, and a 2xx whose body is
//! JSON, or server-sent events whose data is JSON and that end properly.

use serde_json::Value;

use super::client::{Request, Response};

/// Checks one exchange; Err says what is wrong, with the request.
pub fn exchange(req: &Request, res: &Result<Response, String>) -> Result<(), String> {
    let res = res.as_ref().map_err(|e| format!("no response: {e}\n  request: {}", req.describe()))?;
    response(req, res).map_err(|e| {
        let body = String::from_utf8_lossy(&res.body[..res.body.len().min(500)]).into_owned();
        format!("{e}\n  request: {}\n  response: {} {body}", req.describe(), res.status)
    })
}

fn response(req: &Request, res: &Response) -> Result<(), String> {
    match res.status {
        200..=299 if req.method == "HEAD" => Ok(()),
        204 if res.body.is_empty() => Ok(()),
        204 => Err("a 204 with a body".into()),
        200..=299 if is_event_stream(res) => event_stream(res),
        200..=299 => json_body(res).map(drop),
        400..=499 => error_shape(req, res),
        503 => {
            error_shape(req, res)?;
            let message = json_body(res)?["error"]["message"].as_str().unwrap_or_default().to_owned();
            if message.contains("restarting") {
                Ok(())
            } else {
                Err(format!("a 503 that is not a model restart: {message}"))
            }
        }
        s => Err(format!("status {s}")),
    }
}

fn is_event_stream(res: &Response) -> bool {
    res.header("content-type").is_some_and(|ct| ct.starts_with("text/event-stream"))
}

fn json_body(res: &Response) -> Result<Value, String> {
    let ct = res.header("content-type").unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err(format!("content type `{ct}`, not JSON"));
    }
    serde_json::from_slice(&res.body).map_err(|e| format!("the body is not JSON ({e})"))
}

/// `{"error": {"code": string, "type": string, "param": string|null, "message": non-empty}}`.
fn error_shape(req: &Request, res: &Response) -> Result<(), String> {
    if req.method == "HEAD" {
        return Ok(());
    }
    let body = json_body(res)?;
    let error = body.get("error").ok_or("no `error` member")?;
    let string = |name: &str| error.get(name).and_then(Value::as_str).ok_or(format!("error.{name} is not a string"));
    string("code")?;
    string("type")?;
    if string("message")?.trim().is_empty() {
        return Err("error.message is empty".into());
    }
    match error.get("param") {
        Some(Value::String(_) | Value::Null) => Ok(()),
        other => Err(format!("error.param is {other:?}, not a string or null")),
    }
}

/// Every event's data is JSON (or `[DONE]`); an `error` event is a client's fault, not
/// the server's; the stream ends with its last event (`done`, `[DONE]` or an error).
fn event_stream(res: &Response) -> Result<(), String> {
    let text = std::str::from_utf8(&res.body).map_err(|_| "the event stream is not UTF-8")?;
    let mut last = None;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = "";
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if data.is_empty() {
            continue; // a keep-alive comment
        }
        let data = data.join("\n");
        if data == "[DONE]" {
            last = Some("[DONE]".to_owned());
            continue;
        }
        let value: Value = serde_json::from_str(&data).map_err(|e| format!("event data is not JSON ({e}): {data}"))?;
        if name == "error" || value.get("error").is_some() {
            let code = value["error"]["code"].as_str().unwrap_or("<none>");
            if matches!(code, "internal" | "<none>") {
                return Err(format!("the stream failed on the server: {data}"));
            }
        }
        last = Some(if name.is_empty() { "data".to_owned() } else { name.to_owned() });
    }
    match last.as_deref() {
        Some("[DONE]" | "done" | "error") => Ok(()),
        other => Err(format!("the event stream ended without its last event (last: {other:?})")),
    }
}

/// Whether process `pid` is running (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
        .is_some_and(|state| state != 'Z')
}
