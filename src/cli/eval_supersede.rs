//! `engram eval supersede FILE…`: precision and recall of the automatic supersession
//! decision ([`crate::memory::supersede`]) on labelled pairs of memories, with the
//! embeddings of a running server (`POST /v1/embeddings`), so the similarities are the
//! ones the service sees. With `--model`, the server's chat model is asked the same
//! question for each pair (`POST /v1/completions`, greedy), to see whether it decides
//! better than the rules.
//!
//! A file is a JSON list of `{old, new, supersedes}`: whether `new`, stored after
//! `old` for the same user, makes `old` no longer current.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use serde::Deserialize;
use serde_json::json;

use super::client::Client;
use crate::memory::supersede::Rules;
use crate::store::index::dot;
use crate::store::normalized;

#[derive(Debug, Deserialize)]
struct Pair {
    old: String,
    new: String,
    supersedes: bool,
}

/// Counts of one decider's answers against the labels.
#[derive(Debug, Default, Clone, Copy)]
struct Confusion {
    true_pos: usize,
    false_pos: usize,
    false_neg: usize,
    true_neg: usize,
}

impl Confusion {
    fn add(&mut self, said: bool, truth: bool) {
        match (said, truth) {
            (true, true) => self.true_pos += 1,
            (true, false) => self.false_pos += 1,
            (false, true) => self.false_neg += 1,
            (false, false) => self.true_neg += 1,
        }
    }

    fn precision(&self) -> f64 {
        let said = self.true_pos + self.false_pos;
        if said == 0 {
            return 1.0; // it never claimed an update, so it was never wrong about one
        }
        self.true_pos as f64 / said as f64
    }

    fn recall(&self) -> f64 {
        let real = self.true_pos + self.false_neg;
        if real == 0 {
            return 1.0;
        }
        self.true_pos as f64 / real as f64
    }
}

/// Runs the eval over each file and prints one line per file and decider.
pub fn run(files: &[PathBuf], url: &str, key: Option<String>, model: bool, json_out: bool) -> anyhow::Result<()> {
    let client = Client::new(url, key);
    let rules = Rules::default();
    let mut rows = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let pairs: Vec<Pair> = serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let similarities = similarities(&client, &pairs)?;
        let mut by_rules = Confusion::default();
        for (pair, similarity) in pairs.iter().zip(&similarities) {
            let verdict = rules.decide(&pair.old, &pair.new, *similarity);
            by_rules.add(verdict.supersedes(), pair.supersedes);
            if verdict.supersedes() != pair.supersedes {
                eprintln!(
                    "  miss ({verdict:?}, cos {similarity:.2}, truth {}): {:?} → {:?}",
                    pair.supersedes, pair.old, pair.new
                );
            }
        }
        let mut deciders = vec![("rules", by_rules)];
        if model {
            let mut by_model = Confusion::default();
            for pair in &pairs {
                by_model.add(ask_model(&client, pair)?, pair.supersedes);
            }
            deciders.push(("chat model", by_model));
        }
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for (decider, c) in deciders {
            println!(
                "{name}: {decider:>10}: precision {:.3}, recall {:.3} ({} pairs, {} updates; {} right, {} wrong, \
                 {} missed)",
                c.precision(),
                c.recall(),
                pairs.len(),
                c.true_pos + c.false_neg,
                c.true_pos,
                c.false_pos,
                c.false_neg
            );
            rows.push(json!({ "file": name, "decider": decider, "pairs": pairs.len(),
                "precision": c.precision(), "recall": c.recall() }));
        }
    }
    if json_out {
        println!("{}", json!({ "eval": "supersede", "results": rows }));
    }
    Ok(())
}

/// The cosine similarity of each pair's embeddings.
fn similarities(client: &Client, pairs: &[Pair]) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(32) {
        let input: Vec<&str> = chunk.iter().flat_map(|p| [p.old.as_str(), p.new.as_str()]).collect();
        let answer = client.call("POST", "/v1/embeddings", Some(&json!({ "input": input })))?;
        let data = answer["data"].as_array().ok_or_else(|| anyhow!("the answer has no `data` list"))?;
        let vector = |i: usize| -> anyhow::Result<Vec<f32>> {
            let v =
                data.get(i).and_then(|d| d["embedding"].as_array()).ok_or_else(|| anyhow!("embedding {i} missing"))?;
            Ok(v.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
        };
        for i in 0..chunk.len() {
            out.push(dot(&normalized(&vector(2 * i)?), &normalized(&vector(2 * i + 1)?)));
        }
    }
    Ok(out)
}

/// The chat model's answer to "does the new memory replace the old one?", greedy. The
/// prompt uses ChatML, the template of the packaged model.
fn ask_model(client: &Client, pair: &Pair) -> anyhow::Result<bool> {
    let question = format!(
        "Two notes about the same person, written at different times.\nOlder note: {}\nNewer note: {}\n\
         Does the newer note make the older note out of date (it is no longer true)? Answer yes or no.",
        pair.old, pair.new
    );
    let prompt = format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
    let body = json!({ "prompt": prompt, "max_tokens": 3, "temperature": 0 });
    let answer = client.call("POST", "/v1/completions", Some(&body))?;
    let text = answer["choices"][0]["text"].as_str().unwrap_or_default().trim().to_lowercase();
    Ok(text.starts_with("yes"))
}
