//! A bare HTTP/1.1 client over a `TcpStream`. The fuzzer needs requests sent byte for
//! byte as generated: `..` and `%2F` left in paths, any method, content types a client
//! library would fix or refuse, bodies whose framing it chooses. Only the response head
//! is parsed by a library (`httparse`); each request has its own connection
//! (`Connection: close`), so a response ends where the stream does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longer than any request of the fuzzer should take: past it the server is hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A request exactly as it goes on the wire (a `Content-Length` is added unless
/// `framing` says otherwise).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target: a path and query, sent verbatim.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// `Content-Length` of the body (none for an empty body without a content type).
    Length,
    /// A `Content-Length` larger than the body, then the writing half is closed: a
    /// client that hangs up mid-body.
    ShortBody,
}

impl Request {
    pub fn new(method: &str, target: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::Length,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/json").body(body)
    }

    /// The request's first line and the start of its body, for failure reports.
    pub fn describe(&self) -> String {
        let target: String = self.target.chars().take(300).collect();
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(600)]).into_owned();
        let headers: Vec<String> =
            self.headers.iter().map(|(k, v)| format!("{k}: {}", v.chars().take(80).collect::<String>())).collect();
        format!("{} {target} [{}] ({} body bytes) {body}", self.method, headers.join("; "), self.body.len())
    }

    fn wire(&self, host: &str) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let declared = match self.framing {
            Framing::Length => self.body.len(),
            Framing::ShortBody => self.body.len() + 64,
        };
        if declared > 0 || self.framing == Framing::ShortBody || self.method != "GET" {
            head.push_str(&format!("Content-Length: {declared}\r\n"));
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(&self.body);
        wire
    }
}

/// A response: the status, the headers (names lower-cased) and the body, de-chunked.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends `req` to `addr` (`host:port`) and reads the whole response. Err when no
/// complete response came back: refused, reset, cut short, or nothing within
/// [`READ_TIMEOUT`] (a hang).
pub fn send(addr: &str, req: &Request) -> Result<Response, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    // A server may answer (a 4xx) before reading the whole body and close: what it
    // wrote is still read below, so a failed write is not yet an error.
    let wrote = stream.write_all(&req.wire(addr));
    if req.framing == Framing::ShortBody {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if let Err(e) = read {
        if raw.is_empty() {
            let how = if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut {
                "no response within the read timeout (hang)".to_owned()
            } else {
                format!("read: {e}")
            };
            return Err(match wrote {
                Err(w) => format!("{how}; write: {w}"),
                Ok(()) => how,
            });
        }
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let at = match head.parse(raw) {
        Ok(httparse::Status::Complete(at)) => at,
        Ok(httparse::Status::Partial) => {
            return Err(format!("the connection closed after {} bytes, inside the response head", raw.len()))
        }
        Err(e) => {
            return Err(format!(
                "unparsable response head ({e}): {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ))
        }
    };
    let status = head.code.unwrap_or(0);
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let rest = &raw[at..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.trim().parse().ok());
        match length {
            Some(n) if rest.len() < n => return Err(format!("the body was cut short: {} of {n} bytes", rest.len())),
            Some(n) => rest[..n].to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok(Response { status, headers, body })
}

/// Undoes chunked transfer coding; Err when the stream ended before the last chunk.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("the chunked body was cut short (no chunk size)")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("the chunked body was cut short (inside a chunk)".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
