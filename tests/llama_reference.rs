//! The Llama decoder and its loaders.
//!
//! SmolLM2-135M (the packaged GGUF) is checked against reference values that Hugging Face
//! transformers' Llama produced on the same dequantised weights (`shared/notes/models.md`).
//! The loaders are checked on small models built here: GGUF files written with llama.cpp's
//! conventions (names, q/k row order) spelled out independently of the loader, HF folders,
//! and broken inputs that must be refused with errors naming what is wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use engram::model::chat_template::{ChatMessage, ChatTemplate};
use engram::model::gguf::{GgufFile, GgufWriter, MetaValue};
use engram::model::llama::{Llama, LlamaConfig, LlamaError, RopeScaling};
use engram::model::llama_loader::{load_gguf, load_hf_dir, read_gguf_weights, write_hf_dir};
use engram::model::tokenizer::TextTokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

fn smollm_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: the project's set-up installs it", path.display());
    path
}

/// "The capital of France is", as SmolLM2's tokenizer encodes it (from the notes).
const PROMPT: [u32; 5] = [504, 3575, 282, 4649, 314];

/// The model is loaded once and shared; the lock also keeps the tests that use it from
/// competing for the two cores, which would distort the speed measurement.
fn smollm() -> MutexGuard<'static, Llama> {
    static MODEL: OnceLock<Mutex<Llama>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let start = Instant::now();
            let model = load_gguf(&smollm_path(), Device::Cpu, Kind::Float).expect("load SmolLM2");
            eprintln!("SmolLM2 loaded in {:.2?}", start.elapsed());
            Mutex::new(model)
        })
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap()
}

#[test]
fn smollm2_configuration_is_read_from_the_gguf() {
    let file = GgufFile::open(&smollm_path()).unwrap();
    let c = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(
        (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim),
        (30, 576, 1536, 9, 3, 64)
    );
    assert_eq!((c.vocab_size, c.max_position_embeddings), (49152, 8192));
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_scaling, None);
    assert!(c.tie_word_embeddings && !c.attention_bias);
}

#[test]
fn smollm2_next_token_logits_match_transformers() {
    let model = smollm();
    // 134.5M in the notes, the tied head counted once.
    assert!((134_400_000..134_600_000).contains(&model.parameter_count()), "{}", model.parameter_count());
    let mut cache = model.new_cache();
    let logits = model.forward(&PROMPT, &mut cache).unwrap();
    assert_eq!(logits.len(), 49152);
    assert_eq!(cache.len(), 5);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let expected = [(7042, 17.371f32), (260, 14.889), (4528, 13.245)];
    for (rank, (id, value)) in expected.into_iter().enumerate() {
        assert_eq!(order[rank], id, "rank {rank}: got id {} ({})", order[rank], logits[order[rank]]);
        assert!((logits[id] - value).abs() < 0.05, "logit of {id}: {} instead of {value}", logits[id]);
    }
}

#[test]
fn smollm2_incremental_decoding_equals_prefill() {
    let model = smollm();
    let mut cache = model.new_cache();
    let prefill = model.forward(&PROMPT, &mut cache).unwrap();
    let mut cache = model.new_cache();
    let mut stepwise = Vec::new();
    for &token in &PROMPT {
        stepwise = model.forward(&[token], &mut cache).unwrap();
    }
    assert_eq!(cache.len(), 5);
    let diff = max_abs_diff(&prefill, &stepwise);
    assert!(diff < 1e-4, "one token at a time differs from prefill by {diff}");
}

#[test]
fn smollm2_greedy_chat_answers_paris() {
    let file = GgufFile::open(&smollm_path()).unwrap();
    let tokenizer = TextTokenizer::from_gguf(&file).unwrap();
    let bos = tokenizer.token_text(tokenizer.bos_id().unwrap()).unwrap();
    let eos = tokenizer.token_text(tokenizer.eos_id().unwrap()).unwrap();
    let template = ChatTemplate::new(file.get_str("tokenizer.chat_template").unwrap(), &bos, &eos).unwrap();
    let prompt = template.render(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    // The template writes the special tokens itself, as transformers' apply_chat_template does.
    let ids = tokenizer.encode(&prompt, false).unwrap();

    let model = smollm();
    let mut cache = model.new_cache();
    let mut logits = model.forward(&ids, &mut cache).unwrap();
    let mut answer = Vec::new();
    let mut finished = false;
    for _ in 0..20 {
        let next = argmax(&logits);
        if next == 2 {
            finished = true;
            break;
        }
        answer.push(next);
        logits = model.forward(&[next], &mut cache).unwrap();
    }
    let text = tokenizer.decode(&answer, true).unwrap();
    assert_eq!(text, "The capital of France is Paris.");
    assert!(finished, "no <|im_end|> after {text:?}");
}

#[test]
fn smollm2_decode_speed() {
    let model = smollm();
    let mut cache = model.new_cache();
    let mut logits = model.forward(&PROMPT, &mut cache).unwrap();
    // One step to warm up allocators and kernels, then the measured run.
    logits = model.forward(&[argmax(&logits)], &mut cache).unwrap();
    let steps = 30;
    let start = Instant::now();
    for _ in 0..steps {
        logits = model.forward(&[argmax(&logits)], &mut cache).unwrap();
    }
    let elapsed = start.elapsed();
    eprintln!(
        "SmolLM2-135M f32 CPU decode: {:.1} tokens/s ({:.1} ms/token, {} threads)",
        steps as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / steps as f64,
        tch::get_num_threads()
    );
    assert_eq!(cache.len(), PROMPT.len() + 1 + steps);
}

#[test]
fn smollm2_as_hf_folder_gives_the_same_logits() {
    let file = GgufFile::open(&smollm_path()).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    let tensors = read_gguf_weights(&file, &config, Device::Cpu, Kind::Float).unwrap();
    drop(file);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(&config, &tensors, dir.path()).unwrap();
    drop(tensors);
    assert_eq!(LlamaConfig::from_hf_config(&dir.path().join("config.json")).unwrap(), config);
    let from_folder = load_hf_dir(dir.path(), Device::Cpu, Kind::Float).unwrap();

    let model = smollm();
    let expected = model.forward(&PROMPT, &mut model.new_cache()).unwrap();
    let actual = from_folder.forward(&PROMPT, &mut from_folder.new_cache()).unwrap();
    let diff = max_abs_diff(&expected, &actual);
    assert!(diff < 1e-4, "HF folder logits differ by {diff}");
}

// ---------------------------------------------------------------------------------------
// Small generated models.

fn small_config(attention_bias: bool, tie_word_embeddings: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 100,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rope_theta: 10000.0,
        rope_scaling: None,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 64,
        tie_word_embeddings,
        attention_bias,
    }
}

/// Random weights under HF names, as row-major f32 values with their shapes.
fn random_weights(c: &LlamaConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, centre: f32| {
        let n = shape.iter().product();
        let values = (0..n).map(|_| centre + rng.gen_range(-0.3f32..0.3)).collect();
        out.push((name, shape, values));
    };
    let (h, q, kv, i) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
    add("model.embed_tokens.weight".into(), vec![c.vocab_size, h], 0.0);
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![h], 1.0);
        add(format!("{p}.self_attn.q_proj.weight"), vec![q, h], 0.0);
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], 0.0);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], 0.0);
        if c.attention_bias {
            add(format!("{p}.self_attn.q_proj.bias"), vec![q], 0.0);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv], 0.0);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv], 0.0);
        }
        add(format!("{p}.self_attn.o_proj.weight"), vec![h, q], 0.0);
        add(format!("{p}.post_attention_layernorm.weight"), vec![h], 1.0);
        add(format!("{p}.mlp.gate_proj.weight"), vec![i, h], 0.0);
        add(format!("{p}.mlp.up_proj.weight"), vec![i, h], 0.0);
        add(format!("{p}.mlp.down_proj.weight"), vec![h, i], 0.0);
    }
    add("model.norm.weight".into(), vec![h], 1.0);
    if !c.tie_word_embeddings {
        add("lm_head.weight".into(), vec![c.vocab_size, h], 0.0);
    }
    out
}

fn as_tensors(weights: &[(String, Vec<usize>, Vec<f32>)]) -> HashMap<String, Tensor> {
    weights
        .iter()
        .map(|(name, shape, values)| {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            (name.clone(), Tensor::from_slice(values).reshape(dims))
        })
        .collect()
}

/// The GGUF name llama.cpp's converter gives an HF tensor.
fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let parts = [
        ("input_layernorm.", "attn_norm."),
        ("self_attn.q_proj.", "attn_q."),
        ("self_attn.k_proj.", "attn_k."),
        ("self_attn.v_proj.", "attn_v."),
        ("self_attn.o_proj.", "attn_output."),
        ("post_attention_layernorm.", "ffn_norm."),
        ("mlp.gate_proj.", "ffn_gate."),
        ("mlp.up_proj.", "ffn_up."),
        ("mlp.down_proj.", "ffn_down."),
    ];
    let (from, to) = parts.iter().find(|(from, _)| rest.starts_with(from)).unwrap();
    format!("blk.{layer}.{to}{}", &rest[from.len()..])
}

/// llama.cpp's reordering of q/k rows, written out element by element: within each head,
/// HF row `half * (head_dim / 2) + j` (half 0 or 1) is stored at row `2 * j + half`.
fn llama_cpp_permute(values: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let rows = heads * head_dim;
    let row_len = values.len() / rows;
    let mut out = vec![0.0; values.len()];
    for head in 0..heads {
        for half in 0..2 {
            for j in 0..head_dim / 2 {
                let from = head * head_dim + half * (head_dim / 2) + j;
                let to = head * head_dim + 2 * j + half;
                out[to * row_len..(to + 1) * row_len].copy_from_slice(&values[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    out
}

/// Writes `weights` as a GGUF file of architecture `arch`, the way llama.cpp converts an
/// HF checkpoint: GGUF names, innermost-first dims, and for `llama` the q/k row order.
fn write_gguf(path: &Path, arch: &str, c: &LlamaConfig, weights: &[(String, Vec<usize>, Vec<f32>)]) {
    gguf_writer(arch, c, weights).write(path).unwrap();
}

fn gguf_writer(arch: &str, c: &LlamaConfig, weights: &[(String, Vec<usize>, Vec<f32>)]) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String(arch.into()));
    let u32_keys = [
        ("block_count", c.num_layers),
        ("embedding_length", c.hidden_size),
        ("feed_forward_length", c.intermediate_size),
        ("attention.head_count", c.num_heads),
        ("attention.head_count_kv", c.num_kv_heads),
        ("context_length", c.max_position_embeddings),
    ];
    for (key, value) in u32_keys {
        w.add_metadata(format!("{arch}.{key}"), MetaValue::U32(value as u32));
    }
    w.add_metadata(format!("{arch}.rope.freq_base"), MetaValue::F32(c.rope_theta as f32));
    w.add_metadata(format!("{arch}.attention.layer_norm_rms_epsilon"), MetaValue::F32(c.rms_norm_eps as f32));
    for (name, shape, values) in weights {
        let values = if arch == "llama" && name.contains(".q_proj.") {
            llama_cpp_permute(values, c.num_heads, c.head_dim)
        } else if arch == "llama" && name.contains(".k_proj.") {
            llama_cpp_permute(values, c.num_kv_heads, c.head_dim)
        } else {
            values.clone()
        };
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        w.add_f32_tensor(gguf_name(name), &dims, &values);
    }
    w
}

/// Runs `tokens` (at least 5) as one prefill, and again as a prefill, a second prompt
/// chunk after it (the masked path) and two single steps; both must agree. Returns the logits.
fn prefill_and_decode(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let n = tokens.len();
    let whole = model.forward(tokens, &mut model.new_cache()).unwrap();
    let mut cache = model.new_cache();
    model.forward(&tokens[..n - 4], &mut cache).unwrap();
    model.forward(&tokens[n - 4..n - 2], &mut cache).unwrap();
    model.forward(&tokens[n - 2..n - 1], &mut cache).unwrap();
    let last = model.forward(&tokens[n - 1..], &mut cache).unwrap();
    assert_eq!(cache.len(), n);
    let diff = max_abs_diff(&whole, &last);
    assert!(diff < 1e-4, "prefill and decode differ by {diff}");
    assert!(whole.iter().all(|x| x.is_finite()));
    whole
}

const TOKENS: [u32; 7] = [3, 17, 99, 0, 42, 42, 8];

#[test]
fn gguf_files_of_both_architectures_load_like_their_hf_weights() {
    let dir = tempfile::tempdir().unwrap();
    // llama: q/k rows permuted in the file; qwen2: biases, no permutation.
    for (arch, bias, tied) in [("llama", false, true), ("llama", true, false), ("qwen2", true, false)] {
        let config = small_config(bias, tied);
        let weights = random_weights(&config, 11);
        let path = dir.path().join(format!("{arch}-{bias}.gguf"));
        write_gguf(&path, arch, &config, &weights);

        let file = GgufFile::open(&path).unwrap();
        assert_eq!(LlamaConfig::from_gguf(&file).unwrap(), config, "{arch}");
        let from_gguf = load_gguf(&path, Device::Cpu, Kind::Float).unwrap();
        let reference =
            Llama::from_tensors(config.clone(), as_tensors(&weights), Path::new("hf"), Device::Cpu, Kind::Float)
                .unwrap();
        let diff = max_abs_diff(&prefill_and_decode(&from_gguf, &TOKENS), &prefill_and_decode(&reference, &TOKENS));
        assert!(diff < 1e-5, "{arch} (bias {bias}): GGUF and HF weights differ by {diff}");
    }
}

/// Half-precision kinds follow the f32 model to within their precision (on the CPU here;
/// `cuda_matches_cpu` covers the GPU where there is one).
#[test]
fn half_precision_follows_f32() {
    let config = small_config(true, false);
    let full = prefill_and_decode_loose(&Llama::random(config.clone(), 5, Device::Cpu, Kind::Float));
    let spread = full.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for kind in [Kind::BFloat16, Kind::Half] {
        let half = prefill_and_decode_loose(&Llama::random(config.clone(), 5, Device::Cpu, kind));
        let diff = max_abs_diff(&full, &half);
        eprintln!("{kind:?}: max difference {diff} for logits up to {spread}");
        assert!(diff < 0.03 * spread, "{kind:?} strays by {diff}");
        assert_eq!(argmax(&full), argmax(&half), "{kind:?}");
    }
}

/// The same random model on the GPU, in f32 and in half precision, against the CPU. Runs
/// only where libtorch sees a CUDA device.
#[test]
fn cuda_matches_cpu() {
    if !tch::Cuda::is_available() {
        eprintln!("cuda_matches_cpu: no CUDA device, nothing to compare");
        return;
    }
    let mut config = small_config(true, false);
    config.num_layers = 4;
    let prompt: Vec<u32> = (0..40).map(|i| (i * 13 % 100) as u32).collect();
    let run = |device: Device, kind: Kind| {
        let model = Llama::random(config.clone(), 9, device, kind);
        let mut cache = model.new_cache();
        model.forward(&prompt[..30], &mut cache).unwrap();
        model.forward(&prompt[30..38], &mut cache).unwrap();
        model.forward(&prompt[38..39], &mut cache).unwrap();
        model.forward(&prompt[39..], &mut cache).unwrap()
    };
    let cpu = run(Device::Cpu, Kind::Float);
    let spread = cpu.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (kind, tolerance) in [(Kind::Float, 1e-3), (Kind::Half, 0.03), (Kind::BFloat16, 0.05)] {
        let gpu = run(Device::Cuda(0), kind);
        let diff = max_abs_diff(&cpu, &gpu);
        eprintln!("cuda {kind:?}: max difference {diff} for logits up to {spread}");
        assert!(diff < tolerance * spread.max(1.0), "cuda {kind:?} strays by {diff}");
    }
}

fn prefill_and_decode_loose(model: &Llama) -> Vec<f32> {
    let mut cache = model.new_cache();
    model.forward(&TOKENS[..5], &mut cache).unwrap();
    model.forward(&TOKENS[5..6], &mut cache).unwrap();
    model.forward(&TOKENS[6..], &mut cache).unwrap()
}

#[test]
fn random_model_with_biases_and_untied_head_runs() {
    let c = small_config(true, false);
    let model = Llama::random(c.clone(), 3, Device::Cpu, Kind::Float);
    let logits = prefill_and_decode(&model, &TOKENS);
    assert_eq!(logits.len(), 100);
    // Counted by hand: embedding and head, then per block two norms, q/k/v with biases,
    // o, gate, up and down; then the final norm.
    let (h, q, kv, i) = (64, 64, 32, 128);
    let per_block = 2 * h + (q * h + q) + 2 * (kv * h + kv) + h * q + 3 * i * h;
    assert_eq!(model.parameter_count(), 2 * 100 * h + 2 * per_block + h);
    // Another seed, another model.
    let other = Llama::random(c, 4, Device::Cpu, Kind::Float);
    assert!(max_abs_diff(&logits, &prefill_and_decode(&other, &TOKENS)) > 1e-3);
}

#[test]
fn hf_folder_round_trip_keeps_an_untied_biased_model() {
    let config = small_config(true, false);
    let weights = random_weights(&config, 21);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(&config, &as_tensors(&weights), dir.path()).unwrap();
    let loaded = load_hf_dir(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(loaded.config(), &config);
    let reference =
        Llama::from_tensors(config, as_tensors(&weights), Path::new("hf"), Device::Cpu, Kind::Float).unwrap();
    let diff = max_abs_diff(&prefill_and_decode(&loaded, &TOKENS), &prefill_and_decode(&reference, &TOKENS));
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn sharded_hf_folder_loads() {
    let config = small_config(false, true);
    let weights = random_weights(&config, 4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_hf_json().unwrap().to_string()).unwrap();
    // Layer 0 in one shard, everything else in another.
    let tensors = as_tensors(&weights);
    let (first, second): (Vec<_>, Vec<_>) = tensors.iter().partition(|(name, _)| name.contains("layers.0."));
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", &first), ("model-00002-of-00002.safetensors", &second)] {
        let list: Vec<(&str, &Tensor)> = part.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        Tensor::write_safetensors(&list, dir.path().join(shard)).unwrap();
        for (name, _) in part.iter() {
            weight_map.insert((*name).clone(), shard.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let loaded = load_hf_dir(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let reference = Llama::from_tensors(config, tensors, Path::new("hf"), Device::Cpu, Kind::Float).unwrap();
    let diff = max_abs_diff(&prefill_and_decode(&loaded, &TOKENS), &prefill_and_decode(&reference, &TOKENS));
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn wrong_or_missing_tensors_are_named() {
    let config = small_config(true, false);
    let weights = random_weights(&config, 2);
    let source = Path::new("/models/broken.safetensors");

    let mut tensors = as_tensors(&weights);
    tensors
        .insert("model.layers.1.self_attn.k_proj.weight".into(), Tensor::zeros([16, 64], (Kind::Float, Device::Cpu)));
    let err = Llama::from_tensors(config.clone(), tensors, source, Device::Cpu, Kind::Float).unwrap_err();
    assert!(
        matches!(&err, LlamaError::TensorShape { name, expected, actual, .. }
            if name == "model.layers.1.self_attn.k_proj.weight" && expected == &[32, 64] && actual == &[16, 64]),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("model.layers.1.self_attn.k_proj.weight") && message.contains("broken.safetensors"));

    let mut tensors = as_tensors(&weights);
    tensors.remove("model.layers.0.self_attn.v_proj.bias");
    let err = Llama::from_tensors(config.clone(), tensors, source, Device::Cpu, Kind::Float).unwrap_err();
    assert!(matches!(&err, LlamaError::MissingTensor { name, .. } if name == "model.layers.0.self_attn.v_proj.bias"));
    assert!(err.to_string().contains("broken.safetensors"));

    // An untied model without its head.
    let mut tensors = as_tensors(&weights);
    tensors.remove("lm_head.weight");
    let err = Llama::from_tensors(config.clone(), tensors, source, Device::Cpu, Kind::Float).unwrap_err();
    assert!(matches!(&err, LlamaError::MissingTensor { name, .. } if name == "lm_head.weight"), "{err:?}");

    // Integer weights are not weights.
    let mut tensors = as_tensors(&weights);
    tensors.insert("model.norm.weight".into(), Tensor::zeros([64], (Kind::Int64, Device::Cpu)));
    let err = Llama::from_tensors(config.clone(), tensors, source, Device::Cpu, Kind::Float).unwrap_err();
    assert!(matches!(&err, LlamaError::TensorKind { name, .. } if name == "model.norm.weight"), "{err:?}");

    // In a GGUF file the error uses the file's own tensor names.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.gguf");
    let without: Vec<_> =
        weights.iter().filter(|(name, _, _)| name != "model.layers.1.mlp.up_proj.weight").cloned().collect();
    write_gguf(&path, "llama", &config, &without);
    let err = load_gguf(&path, Device::Cpu, Kind::Float).unwrap_err();
    assert!(matches!(&err, LlamaError::MissingTensor { name, .. } if name == "blk.1.ffn_up.weight"), "{err:?}");
    assert!(err.to_string().contains("short.gguf"));
}

#[test]
fn unknown_architectures_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    let mut json = small_config(false, true).to_hf_json().unwrap();
    json["model_type"] = "gpt_neox".into();
    std::fs::write(&config_path, json.to_string()).unwrap();
    let err = LlamaConfig::from_hf_config(&config_path).unwrap_err();
    assert!(
        matches!(&err, LlamaError::UnsupportedArchitecture { architecture, .. } if architecture == "gpt_neox"),
        "{err:?}"
    );
    assert!(err.to_string().contains("gpt_neox") && err.to_string().contains("config.json"));

    let path = dir.path().join("phi.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetaValue::String("phi2".into()));
    w.add_f32_tensor("token_embd.weight", &[4, 10], &[0.0; 40]);
    w.write(&path).unwrap();
    let err = load_gguf(&path, Device::Cpu, Kind::Float).unwrap_err();
    assert!(matches!(&err, LlamaError::UnsupportedArchitecture { architecture, .. } if architecture == "phi2"));
    assert!(err.to_string().contains("phi2") && err.to_string().contains("phi.gguf"));
}

#[test]
fn hf_config_features_this_decoder_lacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let base = small_config(false, true).to_hf_json().unwrap();
    let cases = [
        ("hidden_act", serde_json::json!("gelu"), "gelu"),
        ("rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4.0}), "yarn"),
        ("num_key_value_heads", serde_json::json!(3), "num_kv_heads"),
    ];
    for (key, value, named) in cases {
        let mut json = base.clone();
        json[key] = value;
        std::fs::write(&path, json.to_string()).unwrap();
        let err = LlamaConfig::from_hf_config(&path).unwrap_err();
        assert!(matches!(err, LlamaError::InvalidConfig { .. }), "{key}: {err:?}");
        assert!(err.to_string().contains(named), "{key}: {err}");
    }
    let mut json = base.clone();
    json.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, json.to_string()).unwrap();
    assert!(LlamaConfig::from_hf_config(&path).unwrap_err().to_string().contains("hidden_size"));
}

#[test]
fn context_limit_is_enforced() {
    let model = Llama::random(small_config(false, true), 1, Device::Cpu, Kind::Float);
    let mut cache = model.new_cache();
    model.forward(&[1; 60], &mut cache).unwrap();
    model.forward(&[1; 4], &mut cache).unwrap();
    let err = model.forward(&[1], &mut cache).unwrap_err();
    assert!(matches!(err, LlamaError::ContextLength { requested: 65, limit: 64 }), "{err:?}");
    assert!(err.to_string().contains("64"));
}

#[test]
fn gguf_rope_scaling_is_read() {
    let config = small_config(false, true);
    let weights = random_weights(&config, 8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaled.gguf");
    let read = |w: &GgufWriter| {
        w.write(&path).unwrap();
        LlamaConfig::from_gguf(&GgufFile::open(&path).unwrap())
    };

    let mut w = gguf_writer("llama", &config, &weights);
    w.add_metadata("llama.rope.scaling.type", MetaValue::String("linear".into()));
    w.add_metadata("llama.rope.scaling.factor", MetaValue::F32(4.0));
    assert_eq!(read(&w).unwrap().rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));

    // llama.cpp's form of Llama 3.1 scaling: one divisor per frequency (head_dim 16 → 8).
    let divisors = [1.0f32, 1.0, 1.5, 2.0, 4.0, 8.0, 8.0, 8.0];
    let mut w = gguf_writer("llama", &config, &weights);
    w.add_f32_tensor("rope_freqs.weight", &[8], &divisors);
    let expected: Vec<f64> = divisors.iter().map(|&d| d.into()).collect();
    assert_eq!(read(&w).unwrap().rope_scaling, Some(RopeScaling::FrequencyDivisors(expected)));
    // ... which changes the output, as scaling must.
    let scaled = load_gguf(&path, Device::Cpu, Kind::Float).unwrap();
    let plain =
        Llama::from_tensors(config.clone(), as_tensors(&weights), Path::new("hf"), Device::Cpu, Kind::Float).unwrap();
    assert!(max_abs_diff(&prefill_and_decode(&scaled, &TOKENS), &prefill_and_decode(&plain, &TOKENS)) > 1e-3);

    let mut w = gguf_writer("llama", &config, &weights);
    w.add_metadata("llama.rope.scaling.type", MetaValue::String("yarn".into()));
    let err = read(&w).unwrap_err();
    assert!(matches!(err, LlamaError::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("llama.rope.scaling.type") && err.to_string().contains("yarn"), "{err}");
}
