//! `engram bench embed` and `engram bench generate`: the inference engine's throughput.
//! Each prints a baseline measured in the same run (the memory-bandwidth bound for
//! decoding); `bench/compare.py` adds sentence-transformers and Hugging Face
//! transformers on the same inputs, reading the `--json` line these print.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;

use crate::config::Settings;
use crate::model::attention_probe::{attribution_layers, AttentionProbe};
use crate::model::embedder::{Embedder, EmbedderOptions};
use crate::model::llama_loader::WeightFormat;
use crate::model::sampling::argmax;

/// The sentences `bench embed` uses: one per line, blank lines skipped.
pub fn read_corpus(path: &Path, limit: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the corpus {} (make bench-corpus writes it)", path.display()))?;
    let sentences: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).take(limit).map(str::to_owned).collect();
    if sentences.len() < limit {
        bail!("the corpus {} has {} sentences, {limit} wanted", path.display(), sentences.len());
    }
    Ok(sentences)
}

fn device_and_kind(settings: &Settings) -> anyhow::Result<(crate::model::ResolvedDevice, tch::Kind)> {
    let device = crate::server::resolve_device(&settings.model)?;
    Ok((device, crate::server::compute_kind(device, settings.model.cuda_dtype)))
}

pub fn bench_embed(
    settings: &Settings,
    corpus: &Path,
    sentences: usize,
    batch_sizes: &[usize],
    json_out: bool,
) -> anyhow::Result<()> {
    let texts = read_corpus(corpus, sentences)?;
    let (device, _) = device_and_kind(settings)?;
    let (kind, configured) = crate::server::embedder_kinds(device, &settings.model);
    let words: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();
    println!(
        "engram bench embed: {} sentences ({:.1} words on average) from {} on {device}",
        texts.len(),
        words as f64 / texts.len() as f64,
        corpus.display(),
    );
    // The configured products first; where they are not the compute kind (bf16 on a CPU
    // with AMX), the compute kind's too, side by side, with how far their vectors part.
    let mut precisions = vec![configured];
    if configured != kind {
        precisions.push(kind);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut results = Vec::new();
    let mut vectors: Vec<Vec<Vec<f32>>> = Vec::new();
    for &matmul_kind in &precisions {
        let opts = EmbedderOptions {
            queue_capacity: 4,
            max_batch_tokens: settings.model.embedder_max_batch_tokens,
            threads: settings.model.threads,
            matmul_kind,
        };
        let embedder = Embedder::start(&settings.model.embedder, device, kind, opts)?;
        println!("model {}, {}", embedder.info().name, embedder.info().dtype);
        // One warm-up batch: first calls allocate.
        runtime.block_on(embedder.embed(texts[..32.min(texts.len())].to_vec()))?;
        let mut per_batch: Vec<Vec<Vec<f32>>> = Vec::new();
        for &batch in batch_sizes {
            let mut all = Vec::with_capacity(texts.len());
            let started = Instant::now();
            for chunk in texts.chunks(batch.max(1)) {
                all.extend(runtime.block_on(embedder.embed(chunk.to_vec()))?.vectors);
            }
            let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
            println!("batch {batch:>3}: {rate:>8.1} sentences/s");
            results.push(json!({
                "batch": batch, "sentences_per_s": rate, "products": format!("{matmul_kind:?}"),
            }));
            per_batch.push(all);
        }
        // The same sentences embedded in batches of different sizes: how far a vector
        // moves with its company.
        if let (Some(first), Some(last)) = (per_batch.first(), per_batch.last()) {
            println!("least cosine between batch sizes {:?}: {:.7}", batch_sizes, least_cosine(first, last));
        }
        vectors.extend(per_batch.pop());
    }
    let mut precisions_cosine = None;
    if let [first, second] = vectors.as_slice() {
        let cosine = least_cosine(first, second);
        println!("least cosine between the two precisions' vectors: {cosine:.7}");
        precisions_cosine = Some(cosine);
    }
    if json_out {
        println!(
            "{}",
            json!({
                "bench": "embed", "device": device.to_string(), "results": results, "least_cosine": precisions_cosine,
            })
        );
    }
    Ok(())
}

/// The least cosine between paired unit vectors, summed in f64: the figures printed reach
/// the seventh decimal, where f32 sums over 384 products would round.
fn least_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum::<f64>())
        .fold(f64::INFINITY, f64::min)
}

/// Bytes per second that one pass over a large buffer reads: the ceiling for decoding,
/// which reads every weight once per token.
fn memory_read_bandwidth() -> f64 {
    let words = 256 * 1024 * 1024 / 8; // 256 MiB, well past every cache
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..3 {
        let started = Instant::now();
        sink = sink.wrapping_add(buf.iter().fold(0u64, |a, b| a.wrapping_add(*b)));
        best = best.min(started.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best
}

pub fn bench_generate(
    settings: &Settings,
    model: Option<PathBuf>,
    prompt_tokens: usize,
    new_tokens: usize,
    only: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let path = model.unwrap_or_else(|| settings.model.generator.clone());
    let (device, kind) = device_and_kind(settings)?;
    if settings.model.threads > 0 {
        tch::set_num_threads(settings.model.threads as i32);
    }
    let _no_grad = tch::no_grad_guard();
    let bandwidth = memory_read_bandwidth();
    println!(
        "engram bench generate: {} on {device}, {} threads, {prompt_tokens}-token prompt then {new_tokens} tokens \
         greedy; memory read bandwidth {:.1} GB/s",
        path.display(),
        tch::get_num_threads(),
        bandwidth / 1e9
    );
    // The quantised path exists on the CPU only; elsewhere the one format is measured.
    let formats: &[(&str, WeightFormat)] = if device.0 == tch::Device::Cpu {
        &[("gguf blocks", WeightFormat::Quantized), ("f32", WeightFormat::Dequantized)]
    } else {
        &[("dequantised", WeightFormat::Dequantized)]
    };
    let formats: Vec<_> = match only {
        None => formats.to_vec(),
        Some("gguf") => formats.iter().copied().filter(|(_, f)| *f == WeightFormat::Quantized).collect(),
        Some("f32") => formats.iter().copied().filter(|(_, f)| *f == WeightFormat::Dequantized).collect(),
        Some(other) => bail!("--only: `{other}` is neither gguf nor f32"),
    };
    let mut results = Vec::new();
    let mut greedy = Vec::new();
    for &(label, format) in &formats {
        let started = Instant::now();
        let llama = crate::model::llama_loader::load_gguf_as(&path, device.0, kind, format)?;
        let load = started.elapsed();
        let vocab = llama.config().vocab_size as u32;
        // A deterministic prompt of ordinary tokens (ids spread over the vocabulary).
        let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| 100 + (i * 7919) % (vocab - 200)).collect();
        // One prefill and greedy decode, with chat attribution's probe (`chat.attribution`)
        // on or off: (prefill s, decode s, tokens, the probe's share on the prompt).
        let layers = attribution_layers(llama.config().num_layers);
        let run = |probed: bool| -> anyhow::Result<(f64, f64, Vec<u32>, f32)> {
            let mut probe = AttentionProbe::new(layers, prompt_tokens + new_tokens + 1, device.0)?;
            let mut probe = probed.then_some(&mut probe);
            let mut cache = llama.new_cache();
            let started = Instant::now();
            let mut logits = llama.forward_probed(&prompt, &mut cache, probe.as_deref_mut())?;
            let prefill = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let mut generated = Vec::with_capacity(new_tokens);
            for _ in 0..new_tokens {
                let next = argmax(&logits);
                generated.push(next);
                logits = llama.forward_probed(&[next], &mut cache, probe.as_deref_mut())?;
            }
            let decode = started.elapsed().as_secs_f64();
            let share = match probe {
                Some(p) => p.shares(&[0..prompt_tokens])?[0],
                None => 0.0,
            };
            Ok((prefill, decode, generated, share))
        };
        // Off and on twice each, interleaved, best of each: the first run also warms caches.
        let (mut prefill, mut decode, mut probed, mut prompt_share) = (f64::MAX, f64::MAX, f64::MAX, 0.0);
        let mut generated = Vec::new();
        for _ in 0..2 {
            let (p, d, g, _) = run(false)?;
            (prefill, decode, generated) = (prefill.min(p), decode.min(d), g);
            let (_, d, g, share) = run(true)?;
            anyhow::ensure!(g == generated, "attribution changed the greedy tokens");
            (probed, prompt_share) = (probed.min(d), share);
        }
        let bytes = llama.weight_bytes_per_token();
        let bound = bandwidth / bytes as f64;
        let (prefill_rate, decode_rate) = (prompt_tokens as f64 / prefill, new_tokens as f64 / decode);
        let probed_rate = new_tokens as f64 / probed;
        println!(
            "{label:>12}: decode {decode_rate:6.1} tokens/s, prefill {prefill_rate:6.1} tokens/s; {:.1} MB read per \
             token, bandwidth bound {bound:.1} tokens/s ({:.0}% of it); loaded in {:.1}s",
            bytes as f64 / 1e6,
            100.0 * decode_rate / bound,
            load.as_secs_f64()
        );
        println!(
            "{:>12}  with attribution (last {layers} layers probed): decode {probed_rate:6.1} tokens/s ({:.2}x); \
             {:.0}% of the attention on the prompt",
            "",
            probed_rate / decode_rate,
            100.0 * prompt_share
        );
        results.push(json!({ "weights": label, "decode_tokens_per_s": decode_rate,
                             "decode_with_attribution_tokens_per_s": probed_rate,
                             "prefill_tokens_per_s": prefill_rate, "bytes_per_token": bytes,
                             "bandwidth_bound_tokens_per_s": bound }));
        greedy.push(generated);
    }
    if let [quantized, dense] = results.as_slice() {
        let ratio = |key: &str| quantized[key].as_f64().unwrap_or(0.0) / dense[key].as_f64().unwrap_or(1.0);
        println!(
            "gguf blocks / f32: decode {:.2}x, prefill {:.2}x; same greedy tokens: {}",
            ratio("decode_tokens_per_s"),
            ratio("prefill_tokens_per_s"),
            greedy[0] == greedy[1]
        );
    }
    if json_out {
        println!(
            "{}",
            json!({ "bench": "generate", "device": device.to_string(), "bandwidth_bytes_per_s": bandwidth,
                    "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "results": results,
                    // The first format's figures, as bench/compare.py reads them.
                    "decode_tokens_per_s": results[0]["decode_tokens_per_s"],
                    "prefill_tokens_per_s": results[0]["prefill_tokens_per_s"] })
        );
    }
    Ok(())
}
