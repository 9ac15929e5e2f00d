//! `engram eval …`: quality figures measured against a running server over its HTTP API,
//! so that what is measured is exactly what clients get (API, embedding model, index,
//! lexical side and fusion together).
//!
//! `engram eval retrieval FILE` reads a dataset in the LoCoMo format (a JSON list of
//! conversations, each with sessions of dated turns and questions whose `evidence` names
//! the turns, `dia_id`s, that hold the answer), imports every session through
//! `POST /v1/sessions/{id}/messages`, and asks each question in the three search modes.
//! Recall@k is the share of a question's evidence turns among the top k results,
//! averaged over the questions that have evidence.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use super::client::{encode, Client};
use clap::Subcommand;
use serde_json::{json, Value};

/// The cut-offs reported; the searches ask for the largest.
const KS: [usize; 4] = [1, 5, 10, 25];

/// The search modes compared, each with the name printed for it (`hybrid` is the fusion of
/// the other two, hence "fused").
const METHODS: [(&str, &str); 3] = [("dense", "dense"), ("lexical", "lexical"), ("hybrid", "fused")];

/// The `engram eval` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Retrieval recall@k of the dense, lexical and fused search on a LoCoMo-format
    /// dataset, against a running server (its data for the eval users is replaced).
    Retrieval {
        /// The dataset: a JSON list of LoCoMo samples.
        file: PathBuf,
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An API key, when the server requires one.
        #[arg(long)]
        key: Option<String>,
        /// Each sample is imported for the user `{prefix}-{sample_id}`.
        #[arg(long, default_value = "eval")]
        user_prefix: String,
        /// Also print the figures as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Precision and recall of automatic supersession on labelled pairs of memories
    /// (JSON lists of `{old, new, supersedes}`), with a running server's embeddings.
    Supersede {
        files: Vec<PathBuf>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long)]
        key: Option<String>,
        /// Also ask the server's chat model to decide each pair.
        #[arg(long)]
        model: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Runs an eval command.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Retrieval { file, url, key, user_prefix, json } => {
            let samples = load_dataset(&file)?;
            let client = Client::new(&url, key);
            let report = eval_retrieval(&client, &samples, &user_prefix)?;
            print!("{}", report.table());
            if json {
                println!("{}", report.json());
            }
            Ok(())
        }
        EvalCommand::Supersede { files, url, key, model, json } => {
            super::eval_supersede::run(&files, &url, key, model, json)
        }
    }
}

/// One conversation of the dataset, as far as the eval needs it.
#[derive(Debug)]
struct Sample {
    id: String,
    sessions: Vec<Session>,
    questions: Vec<Question>,
}

#[derive(Debug)]
struct Session {
    number: u32,
    /// RFC 3339, when the dataset's date could be read.
    created_at: Option<String>,
    turns: Vec<Turn>,
}

#[derive(Debug)]
struct Turn {
    speaker: String,
    dia_id: String,
    text: String,
}

#[derive(Debug)]
struct Question {
    text: String,
    evidence: Vec<String>,
}

fn load_dataset(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: Value = serde_json::from_str(&raw).with_context(|| format!("{} is not JSON", path.display()))?;
    let list = doc.as_array().ok_or_else(|| anyhow!("{}: expected a JSON list of samples", path.display()))?;
    let samples = list
        .iter()
        .enumerate()
        .map(|(i, s)| parse_sample(s).with_context(|| format!("{}: sample {i}", path.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if samples.is_empty() {
        bail!("{}: no samples", path.display());
    }
    Ok(samples)
}

fn str_field<'a>(v: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    v[field].as_str().ok_or_else(|| anyhow!("`{field}` is missing or not text"))
}

fn parse_sample(s: &Value) -> anyhow::Result<Sample> {
    // Some copies of LoCoMo number the samples; accept either.
    let id = match &s["sample_id"] {
        Value::String(id) => id.clone(),
        Value::Number(n) => n.to_string(),
        _ => bail!("`sample_id` is missing"),
    };
    let conv = s["conversation"].as_object().ok_or_else(|| anyhow!("`conversation` is missing"))?;
    let mut sessions = Vec::new();
    for (key, value) in conv {
        // Only `session_N` itself; `session_N_date_time` and the like are read beside it.
        let Some(number) = key.strip_prefix("session_").and_then(|n| n.parse::<u32>().ok()) else { continue };
        let turns = value.as_array().ok_or_else(|| anyhow!("`{key}` is not a list"))?;
        let turns = turns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                anyhow::Ok(Turn {
                    speaker: str_field(t, "speaker")?.to_owned(),
                    dia_id: str_field(t, "dia_id")?.to_owned(),
                    text: str_field(t, "text")?.to_owned(),
                })
                .with_context(|| format!("`{key}`[{i}]"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let created_at = conv.get(&format!("{key}_date_time")).and_then(Value::as_str).and_then(parse_locomo_date);
        sessions.push(Session { number, created_at, turns });
    }
    sessions.sort_by_key(|s| s.number);
    let questions = s["qa"]
        .as_array()
        .ok_or_else(|| anyhow!("`qa` is missing"))?
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let text = str_field(q, "question").with_context(|| format!("qa[{i}]"))?.to_owned();
            // LoCoMo has a few evidence entries that hold several ids ("D8:6; D9:17").
            let mut evidence: Vec<String> = q["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .flat_map(|e| e.split([';', ',']))
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect();
            evidence.sort();
            evidence.dedup();
            Ok(Question { text, evidence })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Sample { id, sessions, questions })
}

/// LoCoMo's session dates look like "1:56 pm on 8 May, 2023"; they carry no zone, so
/// they are read as UTC. None when the text has another shape.
fn parse_locomo_date(s: &str) -> Option<String> {
    let dt = jiff::civil::DateTime::strptime("%I:%M %p on %d %B, %Y", s.trim()).ok()?;
    let ts = jiff::tz::TimeZone::UTC.to_timestamp(dt).ok()?;
    Some(ts.to_string())
}

/// Summed recall per method and cut-off, and what was imported.
struct Report {
    conversations: usize,
    sessions: usize,
    turns: usize,
    questions: usize,
    /// For each method (in `METHODS` order), the recall sum at each of `KS`.
    sums: [[f64; KS.len()]; METHODS.len()],
}

impl Report {
    fn recall(&self, method: usize, k: usize) -> f64 {
        if self.questions == 0 {
            0.0
        } else {
            self.sums[method][k] / self.questions as f64
        }
    }

    fn table(&self) -> String {
        let mut out = format!(
            "engram eval retrieval: {} conversations, {} sessions, {} turns, {} questions\n",
            self.conversations, self.sessions, self.turns, self.questions
        );
        out.push_str(&format!("{:<10}", "method"));
        for k in KS {
            out.push_str(&format!("{:>11}", format!("recall@{k}")));
        }
        out.push('\n');
        for (m, (_, name)) in METHODS.iter().enumerate() {
            out.push_str(&format!("{name:<10}"));
            for i in 0..KS.len() {
                out.push_str(&format!("{:>11.3}", self.recall(m, i)));
            }
            out.push('\n');
        }
        out
    }

    fn json(&self) -> Value {
        let mut methods = serde_json::Map::new();
        for (m, (_, name)) in METHODS.iter().enumerate() {
            let row: serde_json::Map<String, Value> =
                KS.iter().enumerate().map(|(i, k)| (format!("recall@{k}"), json!(self.recall(m, i)))).collect();
            methods.insert((*name).to_owned(), Value::Object(row));
        }
        json!({
            "conversations": self.conversations, "sessions": self.sessions, "turns": self.turns,
            "questions": self.questions, "methods": methods,
        })
    }
}

fn eval_retrieval(client: &Client, samples: &[Sample], prefix: &str) -> anyhow::Result<Report> {
    let mut report =
        Report { conversations: 0, sessions: 0, turns: 0, questions: 0, sums: [[0.0; KS.len()]; METHODS.len()] };
    for sample in samples {
        let user = format!("{prefix}-{}", sample.id);
        import(client, sample, &user).with_context(|| format!("importing sample {}", sample.id))?;
        report.conversations += 1;
        report.sessions += sample.sessions.len();
        report.turns += sample.sessions.iter().map(|s| s.turns.len()).sum::<usize>();
        for q in sample.questions.iter().filter(|q| !q.evidence.is_empty()) {
            report.questions += 1;
            for (m, (mode, _)) in METHODS.iter().enumerate() {
                let found = search(client, &user, &q.text, mode)
                    .with_context(|| format!("sample {}: searching `{}` ({mode})", sample.id, q.text))?;
                for (i, k) in KS.iter().enumerate() {
                    report.sums[m][i] += recall_at(&found, &q.evidence, *k);
                }
            }
        }
        eprintln!("engram eval: sample {} done", sample.id);
    }
    Ok(report)
}

/// Replaces whatever the user held with the sample's sessions, so reruns start clean.
fn import(client: &Client, sample: &Sample, user: &str) -> anyhow::Result<()> {
    client.call("DELETE", &format!("/v1/memories?user_id={}", encode(user)), None)?;
    for session in &sample.sessions {
        if session.turns.is_empty() {
            continue;
        }
        let messages: Vec<Value> = session
            .turns
            .iter()
            .map(|t| {
                let mut m = json!({ "role": "user", "name": t.speaker, "content": t.text,
                    "metadata": { "dia_id": t.dia_id } });
                if let Some(at) = &session.created_at {
                    m["created_at"] = json!(at);
                }
                m
            })
            .collect();
        let id = format!("{}-s{}", sample.id, session.number);
        // Erasing the user leaves its sessions; without this a rerun would append the
        // turns to the old transcripts.
        client.delete_if_present(&format!("/v1/sessions/{}", encode(&id)))?;
        let path = format!("/v1/sessions/{}/messages", encode(&id));
        client.call("POST", &path, Some(&json!({ "user_id": user, "messages": messages })))?;
    }
    Ok(())
}

/// The `dia_id` of each result, best first (None for a memory that is no dataset turn).
fn search(client: &Client, user: &str, query: &str, mode: &str) -> anyhow::Result<Vec<Option<String>>> {
    let k = KS[KS.len() - 1];
    let body = json!({ "query": query, "user_id": user, "k": k, "mode": mode });
    let found = client.call("POST", "/v1/memories/search", Some(&body))?;
    let results = found["results"].as_array().ok_or_else(|| anyhow!("the answer has no `results` list"))?;
    Ok(results.iter().map(|r| r["metadata"]["dia_id"].as_str().map(str::to_owned)).collect())
}

/// The share of `evidence` among the first `k` results.
fn recall_at(found: &[Option<String>], evidence: &[String], k: usize) -> f64 {
    let top: HashSet<&str> = found.iter().take(k).flatten().map(String::as_str).collect();
    evidence.iter().filter(|e| top.contains(e.as_str())).count() as f64 / evidence.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_locomo_dates() {
        assert_eq!(parse_locomo_date("1:56 pm on 8 May, 2023").as_deref(), Some("2023-05-08T13:56:00Z"));
        assert_eq!(parse_locomo_date("10:04 am on 19 October, 2023").as_deref(), Some("2023-10-19T10:04:00Z"));
        assert_eq!(parse_locomo_date("yesterday"), None);
    }

    #[test]
    fn recall_counts_evidence_in_the_top_k() {
        let found = vec![Some("D1:2".to_owned()), None, Some("D1:5".to_owned())];
        let evidence = vec!["D1:5".to_owned(), "D2:1".to_owned()];
        assert_eq!(recall_at(&found, &evidence, 1), 0.0);
        assert_eq!(recall_at(&found, &evidence, 3), 0.5);
    }

    #[test]
    fn splits_joined_evidence() {
        let s = json!({ "sample_id": "x", "conversation": { "session_1": [] },
            "qa": [{ "question": "q", "evidence": ["D8:6; D9:17", "D8:6"] }] });
        assert_eq!(parse_sample(&s).unwrap().questions[0].evidence, ["D8:6", "D9:17"]);
    }
}
