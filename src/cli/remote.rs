//! Commands that talk to a running server: `engram ingest`, `engram query` and
//! `engram chat`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::client::{encode, Client};

/// Where the server is and who is asking.
#[derive(Debug, Args)]
pub struct Remote {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "ENGRAM_URL")]
    pub url: String,
    /// An API key, when the server requires one.
    #[arg(long, env = "ENGRAM_API_KEY")]
    pub key: Option<String>,
    /// The user whose memory is used (documents without it are the tenant's shared
    /// knowledge).
    #[arg(long)]
    pub user_id: Option<String>,
}

impl Remote {
    fn client(&self) -> Client {
        Client::new(&self.url, self.key.clone())
    }

    fn user(&self) -> anyhow::Result<&str> {
        self.user_id.as_deref().context("--user-id is required for this command")
    }
}

const DOCUMENT_TYPES: [&str; 6] = ["txt", "md", "markdown", "html", "htm", "pdf"];

/// Files to ingest: the given files, and the documents found in the given folders.
fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|p| p.is_dir());
            out.extend(files.into_iter().filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| DOCUMENT_TYPES.contains(&e.to_lowercase().as_str()))
            }));
            out.extend(collect(&dirs)?);
        } else if path.is_file() {
            out.push(path.clone());
        } else {
            bail!("{} is neither a file nor a folder", path.display());
        }
    }
    Ok(out)
}

/// A `multipart/form-data` body with the file and the optional user.
fn multipart(file: &Path, user_id: Option<&str>) -> anyhow::Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("document").replace('"', "");
    let boundary = format!("engram-{}", ulid::Ulid::new());
    let mut body = Vec::with_capacity(bytes.len() + 512);
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )?;
    body.extend_from_slice(&bytes);
    body.extend_from_slice(b"\r\n");
    if let Some(user) = user_id {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"user_id\"\r\n\r\n{user}\r\n")?;
    }
    write!(body, "--{boundary}--\r\n")?;
    Ok((format!("multipart/form-data; boundary={boundary}"), body))
}

/// `engram ingest PATH…`: uploads each document, following ingestion jobs to the end,
/// with a progress bar over the files.
pub fn ingest(remote: &Remote, paths: &[PathBuf]) -> anyhow::Result<()> {
    let files = collect(paths)?;
    if files.is_empty() {
        bail!("no documents found (looked for {})", DOCUMENT_TYPES.join(", "));
    }
    let client = remote.client();
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut failed = 0;
    for file in &files {
        bar.set_message(file.display().to_string());
        match upload(&client, file, remote.user_id.as_deref(), &bar) {
            Ok(line) => bar.println(line),
            Err(e) => {
                failed += 1;
                bar.println(format!("{}: {e:#}", file.display()));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("ingested {} of {} documents", files.len() - failed, files.len());
    if failed > 0 {
        bail!("{failed} document(s) failed");
    }
    Ok(())
}

fn upload(client: &Client, file: &Path, user_id: Option<&str>, bar: &indicatif::ProgressBar) -> anyhow::Result<String> {
    let (content_type, body) = multipart(file, user_id)?;
    let answer = match client.request("POST", "/v1/documents").set("Content-Type", &content_type).send_bytes(&body) {
        Ok(res) => res.into_json::<Value>()?,
        Err(ureq::Error::Status(status, res)) => {
            let v: Value = res.into_json().unwrap_or_default();
            bail!("HTTP {status}: {}", v["error"]["message"].as_str().unwrap_or("(no message)"));
        }
        Err(e) => bail!("cannot reach the server at {}: {e}", client.base()),
    };
    if let Some(job) = answer["job_id"].as_str() {
        loop {
            let status = client.call("GET", &format!("/v1/jobs/{}", encode(job)), None)?;
            let (done, total) = (status["progress"]["done"].as_u64(), status["progress"]["total"].as_u64());
            bar.set_message(format!("{} ({}/{} chunks)", file.display(), done.unwrap_or(0), total.unwrap_or(0)));
            match status["status"].as_str() {
                Some("done") => break,
                Some("failed") => bail!("ingestion failed: {}", status["error"].as_str().unwrap_or("?")),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
    let id = answer["document_id"].as_str().or(answer["id"].as_str()).unwrap_or("?");
    Ok(format!("{} → document {id}", file.display()))
}

/// `engram query "…"`: the memories that match, best first.
pub fn query(remote: &Remote, text: &str, k: usize, mode: &str) -> anyhow::Result<()> {
    let client = remote.client();
    let body = json!({ "query": text, "user_id": remote.user_id, "k": k, "mode": mode });
    let found = client.call("POST", "/v1/memories/search", Some(&body))?;
    let results = found["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        println!("no memories match");
    }
    for r in results {
        println!(
            "{:.3}  {:<9}  {}",
            r["score"].as_f64().unwrap_or(0.0),
            r["kind"].as_str().unwrap_or("?"),
            r["text"].as_str().unwrap_or("").replace('\n', " ")
        );
    }
    Ok(())
}

/// `engram chat`: an interactive session in the terminal; replies stream in as they are
/// generated. An empty line or end of input ends it.
pub fn chat(remote: &Remote, session: Option<String>) -> anyhow::Result<()> {
    let client = remote.client();
    let user = remote.user()?;
    let mut session_id = session;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        write!(out, "you> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let body = json!({ "user_id": user, "session_id": session_id, "message": line.trim(), "stream": true });
        let res = match client.request("POST", "/v1/chat").send_json(body) {
            Ok(res) => res,
            Err(ureq::Error::Status(status, res)) => {
                let v: Value = res.into_json().unwrap_or_default();
                eprintln!("error: HTTP {status}: {}", v["error"]["message"].as_str().unwrap_or("(no message)"));
                continue;
            }
            Err(e) => bail!("cannot reach the server at {}: {e}", client.base()),
        };
        write!(out, "engram> ")?;
        let mut event = String::new();
        for line in std::io::BufReader::new(res.into_reader()).lines() {
            let line = line?;
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data).unwrap_or_default();
                match event.as_str() {
                    "done" => {
                        session_id = v["session_id"].as_str().map(str::to_owned);
                        let used = v["memories"].as_array().map_or(0, |m| m.len());
                        writeln!(out, "\n  [{used} memories used · session {}]", session_id.as_deref().unwrap_or("?"))?;
                    }
                    "error" => writeln!(out, "\nerror: {}", v["error"]["message"].as_str().unwrap_or("?"))?,
                    _ => write!(out, "{}", v["delta"].as_str().unwrap_or(""))?,
                }
                out.flush()?;
                event.clear();
            }
        }
    }
    Ok(())
}
