//! Loading a [`Llama`] from a GGUF file (llama.cpp's format) or a Hugging Face folder, and
//! writing one as a Hugging Face folder.
//!
//! Both sources are translated to Hugging Face tensor names and layouts, so
//! [`Llama::from_tensors`] sees one format and checks every shape. Two GGUF conventions
//! need undoing on the way:
//! - tensor names (`blk.N.attn_q.weight` for `model.layers.N.self_attn.q_proj.weight`);
//! - for the `llama` architecture, llama.cpp's converter reorders the rows of `attn_q` and
//!   `attn_k` within each head so that its interleaved RoPE can be used; the model here
//!   uses the half-split rotation, so the order is restored on load.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::gguf::matmul::QuantMatrix;
use super::gguf::{GgmlType, GgufFile};
use super::llama::{Llama, LlamaConfig, LlamaError, RopeScaling};

/// `model_type` values of `config.json` this decoder can run.
const HF_MODEL_TYPES: &str = "llama, mistral, qwen2";
/// `general.architecture` values of GGUF files this decoder can run.
const GGUF_ARCHITECTURES: &str = "llama, qwen2";

/// The file name of a single-file safetensors checkpoint in an HF folder.
const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint: `weight_map` maps tensor names to shard files.
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// The fields of `config.json` this decoder reads. Those that HF gives defaults are
/// optional here too.
#[derive(Debug, Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers 5 keeps `rope_theta` and the scaling together under this name.
    rope_parameters: Option<Value>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json` of a Llama, Mistral or Qwen2 model. Any other
    /// `model_type` is [`LlamaError::UnsupportedArchitecture`]; a feature this decoder does
    /// not implement (another activation, MLP biases, YaRN scaling...) is
    /// [`LlamaError::InvalidConfig`] naming it.
    pub fn from_hf_config(path: &Path) -> Result<LlamaConfig, LlamaError> {
        let invalid = |message: String| LlamaError::InvalidConfig { file: path.to_path_buf(), message };
        let text = fs::read_to_string(path).map_err(|source| LlamaError::Io { file: path.to_path_buf(), source })?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or_default().to_string();
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            let architecture = if model_type.is_empty() { "(no model_type)".to_string() } else { model_type };
            return Err(LlamaError::UnsupportedArchitecture {
                file: path.to_path_buf(),
                architecture,
                supported: HF_MODEL_TYPES,
            });
        }
        let hf: HfConfig = serde_json::from_value(raw).map_err(|e| invalid(e.to_string()))?;

        if let Some(act) = hf.hidden_act.as_deref().filter(|&a| a != "silu") {
            return Err(invalid(format!("hidden_act `{act}` is not supported (only silu)")));
        }
        if hf.mlp_bias == Some(true) {
            return Err(invalid("mlp_bias = true is not supported".into()));
        }
        if hf.num_attention_heads == 0 {
            return Err(invalid("num_attention_heads must be positive".into()));
        }
        // The defaults of transformers' config classes, for older files that omit fields.
        let default_context = match model_type.as_str() {
            "llama" => 2048,
            "mistral" => 4096 * 32,
            _ => 32768,
        };
        let mut max_position_embeddings = hf.max_position_embeddings.unwrap_or(default_context);
        // Within its window, sliding-window attention is plain causal attention; past it
        // this decoder would attend too far, so the window caps the context instead.
        let windowed = match model_type.as_str() {
            "qwen2" => hf.use_sliding_window.unwrap_or(false),
            "mistral" => true,
            _ => false,
        };
        if let Some(window) = hf.sliding_window.filter(|&w| windowed && w > 0 && w < max_position_embeddings) {
            tracing::info!(file = %path.display(), window, "sliding-window model: context limited to the window");
            max_position_embeddings = window;
        }
        let rope_parameters = hf.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_scaling = match hf.rope_scaling.as_ref().filter(|v| !v.is_null()).or(rope_parameters) {
            None => None,
            Some(value) => parse_hf_rope_scaling(value).map_err(invalid)?,
        };
        let rope_theta = hf
            .rope_theta
            .or_else(|| rope_parameters.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10000.0);
        let config = LlamaConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads),
            rope_theta,
            rope_scaling,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            // Qwen2's q/k/v always carry biases; its config has no switch for it.
            attention_bias: model_type == "qwen2" || hf.attention_bias.unwrap_or(false),
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Reads the hyper-parameters of a GGUF file whose `general.architecture` is `llama` or
    /// `qwen2` (anything else is [`LlamaError::UnsupportedArchitecture`]).
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig, LlamaError> {
        let path = file.path();
        let invalid = |message: String| LlamaError::InvalidConfig { file: path.to_path_buf(), message };
        let arch = file.get_str("general.architecture")?;
        if !matches!(arch, "llama" | "qwen2") {
            return Err(LlamaError::UnsupportedArchitecture {
                file: path.to_path_buf(),
                architecture: arch.to_string(),
                supported: GGUF_ARCHITECTURES,
            });
        }
        let key = |name: &str| format!("{arch}.{name}");
        let usize_key = |name: &str| file.get_u32(&key(name)).map(|v| v as usize);
        let optional = |name: &str| file.get(&key(name)).is_some();

        if optional("expert_count") && file.get_u32(&key("expert_count"))? > 0 {
            return Err(invalid(format!("`{}`: mixture-of-experts models are not supported", key("expert_count"))));
        }
        let hidden_size = usize_key("embedding_length")?;
        let num_heads = usize_key("attention.head_count")?;
        if num_heads == 0 {
            return Err(invalid(format!("`{}` is 0", key("attention.head_count"))));
        }
        let num_kv_heads =
            if optional("attention.head_count_kv") { usize_key("attention.head_count_kv")? } else { num_heads };
        let head_dim =
            if optional("attention.key_length") { usize_key("attention.key_length")? } else { hidden_size / num_heads };
        if optional("attention.value_length") && usize_key("attention.value_length")? != head_dim {
            return Err(invalid(format!("`{}` differs from the key length {head_dim}", key("attention.value_length"))));
        }
        if optional("rope.dimension_count") && usize_key("rope.dimension_count")? != head_dim {
            return Err(invalid(format!(
                "`{}` = {}: RoPE on part of a head is not supported (head_dim {head_dim})",
                key("rope.dimension_count"),
                usize_key("rope.dimension_count")?
            )));
        }
        // The embedding's shape is the vocabulary the weights were trained for; the token
        // list may be padded differently.
        let embedding = file
            .tensor("token_embd.weight")
            .ok_or_else(|| LlamaError::MissingTensor { file: path.to_path_buf(), name: "token_embd.weight".into() })?;
        let vocab_size = match embedding.dims.as_slice() {
            [_, vocab] => *vocab as usize,
            dims => {
                return Err(LlamaError::TensorShape {
                    file: path.to_path_buf(),
                    name: "token_embd.weight".into(),
                    expected: vec![-1, hidden_size as i64],
                    actual: dims.iter().rev().map(|&d| d as i64).collect(),
                })
            }
        };
        let rope_scaling = gguf_rope_scaling(file, arch, head_dim)?;
        let config = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: usize_key("feed_forward_length")?,
            num_layers: usize_key("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: if optional("rope.freq_base") {
                decimal(file.get_f32(&key("rope.freq_base"))?)
            } else {
                10000.0
            },
            rope_scaling,
            rms_norm_eps: decimal(file.get_f32(&key("attention.layer_norm_rms_epsilon"))?),
            max_position_embeddings: usize_key("context_length")?,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            attention_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// The `config.json` of this model as transformers' `LlamaForCausalLM` reads it.
    /// Per-frequency RoPE divisors have no `config.json` form and are an error.
    pub fn to_hf_json(&self) -> Result<Value, LlamaError> {
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => json!({ "rope_type": "linear", "factor": factor }),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
            Some(RopeScaling::FrequencyDivisors(_)) => {
                return Err(LlamaError::InvalidConfig {
                    file: PathBuf::from("config.json"),
                    message: "per-frequency RoPE divisors cannot be written to config.json".into(),
                })
            }
        };
        Ok(json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
        }))
    }
}

/// A GGUF `f32` as the decimal it was converted from. The converter wrote `1e-5` from the
/// HF config as the nearest `f32`; the shortest decimal that reads back as that `f32` is
/// `1e-5` again, where widening would give 9.999999747e-6.
fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// `rope_scaling` of `config.json`: `None` for the default rotation.
fn parse_hf_rope_scaling(value: &Value) -> Result<Option<RopeScaling>, String> {
    // Older files say `type`, newer ones `rope_type`.
    let kind = value.get("rope_type").or_else(|| value.get("type")).and_then(Value::as_str).unwrap_or("default");
    let number = |name: &str| {
        value.get(name).and_then(Value::as_f64).ok_or_else(|| format!("rope_scaling.{name} is missing or not a number"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: number("factor")? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: value
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .ok_or("rope_scaling.original_max_position_embeddings is missing or not an integer")?
                as usize,
        })),
        other => Err(format!("rope_scaling type `{other}` is not supported (default, linear and llama3 are)")),
    }
}

/// RoPE scaling of a GGUF file: the `{arch}.rope.scaling.*` keys, the older
/// `{arch}.rope.scale_linear`, or a `rope_freqs.weight` tensor of per-frequency divisors.
fn gguf_rope_scaling(file: &GgufFile, arch: &str, head_dim: usize) -> Result<Option<RopeScaling>, LlamaError> {
    let path = file.path();
    let type_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let legacy_key = format!("{arch}.rope.scale_linear");
    let scaling_type = if file.get(&type_key).is_some() { Some(file.get_str(&type_key)?) } else { None };
    match scaling_type {
        Some("linear") => return Ok(Some(RopeScaling::Linear { factor: decimal(file.get_f32(&factor_key)?) })),
        Some("none") | None => {}
        Some(other) => {
            return Err(LlamaError::InvalidConfig {
                file: path.to_path_buf(),
                message: format!("`{type_key}` = `{other}` is not supported (none and linear are)"),
            })
        }
    }
    if file.get(&legacy_key).is_some() {
        let factor = decimal(file.get_f32(&legacy_key)?);
        if factor != 1.0 {
            return Ok(Some(RopeScaling::Linear { factor }));
        }
    }
    if file.tensor("rope_freqs.weight").is_some() {
        let (shape, values) = file.dequantize("rope_freqs.weight")?;
        if shape != [head_dim / 2] {
            return Err(LlamaError::TensorShape {
                file: path.to_path_buf(),
                name: "rope_freqs.weight".into(),
                expected: vec![(head_dim / 2) as i64],
                actual: shape.iter().map(|&d| d as i64).collect(),
            });
        }
        return Ok(Some(RopeScaling::FrequencyDivisors(values.into_iter().map(f64::from).collect())));
    }
    Ok(None)
}

/// The Hugging Face name of a GGUF tensor, or `None` for tensors the model does not use
/// as weights (`rope_freqs.weight` is read into the configuration).
fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let module = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{suffix}"))
}

/// Undoes llama.cpp's reordering of q/k rows. Its converter took each head's rows as
/// `[2, head_dim / 2]` (the two halves the half-split RoPE pairs up) and stored them as
/// `[head_dim / 2, 2]`, interleaving the pairs; swapping those two axes back restores them.
/// A tensor whose first dimension does not fit `heads` is left for the shape check to report.
fn unpermute_rows(tensor: Tensor, heads: usize, head_dim: usize) -> Result<Tensor, LlamaError> {
    let shape = tensor.size();
    if shape.first() != Some(&((heads * head_dim) as i64)) {
        return Ok(tensor);
    }
    let per_row: i64 = shape[1..].iter().product();
    Ok(tensor
        .f_reshape([heads as i64, (head_dim / 2) as i64, 2, per_row])?
        .f_transpose(1, 2)?
        .f_contiguous()?
        .f_reshape(shape.as_slice())?)
}

/// The weights of a GGUF file under Hugging Face names and layouts (q/k rows restored),
/// dequantised and converted to `kind` on `device` one tensor at a time, so that only one
/// tensor at a time exists in f32 when `kind` is narrower. Tensors the model does not use
/// are skipped.
pub fn read_gguf_weights(
    file: &GgufFile,
    config: &LlamaConfig,
    device: Device,
    kind: Kind,
) -> Result<HashMap<String, Tensor>, LlamaError> {
    Ok(read_gguf(file, config, device, kind, false)?.0)
}

/// How a GGUF file's weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 2-D weights stay in the file's quantised (or half-precision) blocks and are
    /// multiplied as such (CPU only, f32 activations); the rest is dequantised.
    Quantized,
    /// Everything dequantised to the compute type (what a GPU runs, and the f32 baseline).
    Dequantized,
}

/// GGUF types kept as blocks by [`WeightFormat::Quantized`]. F32 weights are left to
/// libtorch's own f32 products, which read them no faster than these kernels would.
fn keeps_blocks(dtype: GgmlType) -> bool {
    use GgmlType::*;
    matches!(dtype, F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q4_K | Q5_K | Q6_K)
}

/// The weights of a GGUF file: dense tensors, and with `keep_blocks` the 2-D weights of
/// quantised types as [`QuantMatrix`]es (q/k rows restored by moving whole rows).
fn read_gguf(
    file: &GgufFile,
    config: &LlamaConfig,
    device: Device,
    kind: Kind,
    keep_blocks: bool,
) -> Result<(HashMap<String, Tensor>, HashMap<String, QuantMatrix>), LlamaError> {
    let _guard = tch::no_grad_guard();
    let permuted = file.get_str("general.architecture")? == "llama";
    let mut tensors = HashMap::new();
    let mut quantized = HashMap::new();
    for info in file.tensors() {
        let Some(name) = hf_name(&info.name) else {
            tracing::debug!(file = %file.path().display(), tensor = %info.name, "GGUF tensor not used by the model");
            continue;
        };
        let heads = if !permuted {
            None
        } else if name.contains(".q_proj.") {
            Some(config.num_heads)
        } else if name.contains(".k_proj.") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        let shape = info.shape();
        if keep_blocks && shape.len() == 2 && keeps_blocks(info.dtype) {
            // `shape` is row-major (outermost first): [rows, cols].
            let (rows, cols) = (shape[0], shape[1]);
            let bytes = file.tensor_bytes(&info.name)?.to_vec();
            let mut matrix = QuantMatrix::new(info.dtype, rows, cols, bytes).map_err(|e| {
                LlamaError::InvalidConfig { file: file.path().to_path_buf(), message: format!("{}: {e}", info.name) }
            })?;
            if let Some(heads) = heads.filter(|h| h * config.head_dim == rows) {
                matrix = matrix.permute_rows(&unpermuted_order(heads, config.head_dim)?);
            }
            quantized.insert(name, matrix);
            continue;
        }
        let (shape, values) = file.dequantize(&info.name)?;
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let mut tensor = Tensor::f_from_slice(&values)?.f_reshape(dims.as_slice())?;
        drop(values);
        if let Some(heads) = heads {
            tensor = unpermute_rows(tensor, heads, config.head_dim)?;
        }
        tensors.insert(name, tensor.f_to_device(device)?.f_to_kind(kind)?);
    }
    Ok((tensors, quantized))
}

/// Which stored row each row of an unpermuted q/k weight comes from: [`unpermute_rows`]
/// applied to the row numbers themselves.
fn unpermuted_order(heads: usize, head_dim: usize) -> Result<Vec<usize>, LlamaError> {
    let rows = heads * head_dim;
    let numbers = Tensor::f_arange(rows as i64, (Kind::Int64, Device::Cpu))?.f_reshape([rows as i64, 1])?;
    let order = Vec::<i64>::try_from(&unpermute_rows(numbers, heads, head_dim)?.f_reshape([-1])?)?;
    Ok(order.into_iter().map(|r| r as usize).collect())
}

/// Loads a `llama` or `qwen2` GGUF file, dequantised into `kind` on `device`.
pub fn load_gguf(path: &Path, device: Device, kind: Kind) -> Result<Llama, LlamaError> {
    load_gguf_as(path, device, kind, WeightFormat::Dequantized)
}

/// Loads a `llama` or `qwen2` GGUF file with its weights held as `format` says;
/// [`WeightFormat::Quantized`] applies only on the CPU in f32 (elsewhere the weights are
/// dequantised).
pub fn load_gguf_as(path: &Path, device: Device, kind: Kind, format: WeightFormat) -> Result<Llama, LlamaError> {
    let file = GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let keep_blocks = format == WeightFormat::Quantized && device == Device::Cpu && kind == Kind::Float;
    let (tensors, quantized) = read_gguf(&file, &config, device, kind, keep_blocks)?;
    Llama::from_weights(config, tensors, quantized, path, device, kind).map_err(with_gguf_name)
}

/// Names the tensor of an error as the GGUF file does, since that is what its reader
/// can look for. (Shapes stay row-major, outermost first.)
fn with_gguf_name(error: LlamaError) -> LlamaError {
    let rename = |name: String| gguf_name(&name).unwrap_or(name);
    match error {
        LlamaError::MissingTensor { file, name } => LlamaError::MissingTensor { file, name: rename(name) },
        LlamaError::TensorShape { file, name, expected, actual } => {
            LlamaError::TensorShape { file, name: rename(name), expected, actual }
        }
        LlamaError::TensorKind { file, name, kind } => LlamaError::TensorKind { file, name: rename(name), kind },
        other => other,
    }
}

/// The inverse of [`hf_name`].
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let part = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.{suffix}"))
}

/// Loads a Hugging Face folder: `config.json` and either `model.safetensors` or the shards
/// listed in `model.safetensors.index.json`.
pub fn load_hf_dir(dir: &Path, device: Device, kind: Kind) -> Result<Llama, LlamaError> {
    let config = LlamaConfig::from_hf_config(&dir.join("config.json"))?;
    let single = dir.join(SAFETENSORS_FILE);
    let index = dir.join(SAFETENSORS_INDEX);
    let (files, source) = if single.is_file() {
        (vec![single.clone()], single)
    } else if index.is_file() {
        (shard_files(&index)?, dir.to_path_buf())
    } else {
        return Err(LlamaError::Io {
            file: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither it nor {SAFETENSORS_INDEX} exists"),
            ),
        });
    };
    let mut tensors = HashMap::new();
    for file in &files {
        let read =
            Tensor::read_safetensors(file).map_err(|source| LlamaError::Safetensors { file: file.clone(), source })?;
        // Converted file by file, so that a checkpoint in a wider type than `kind` is
        // never held whole in that type.
        for (name, tensor) in read {
            let tensor = if tensor.is_floating_point() { tensor.f_to_device(device)?.f_to_kind(kind)? } else { tensor };
            tensors.insert(name, tensor);
        }
    }
    Llama::from_tensors(config, tensors, &source, device, kind)
}

/// The shard files named by a `model.safetensors.index.json`, each once, in name order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, LlamaError> {
    let invalid = |message: String| LlamaError::InvalidConfig { file: index.to_path_buf(), message };
    let text = fs::read_to_string(index).map_err(|source| LlamaError::Io { file: index.to_path_buf(), source })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let map =
        value.get("weight_map").and_then(Value::as_object).ok_or_else(|| invalid("no `weight_map` object".into()))?;
    let mut names = BTreeSet::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| invalid(format!("weight_map[{tensor:?}] is not a file name")))?;
        // Shards must sit next to the index; a path elsewhere is a corrupt or hostile file.
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(invalid(format!("weight_map[{tensor:?}] = {shard:?} is not a plain file name")));
        }
        names.insert(shard.to_string());
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(names.into_iter().map(|shard| dir.join(shard)).collect())
}

/// Writes `tensors` (under Hugging Face names) and `config` as a Hugging Face folder:
/// `config.json` and a single `model.safetensors`, readable by [`load_hf_dir`] and by
/// transformers. Creates `dir` if needed.
pub fn write_hf_dir(config: &LlamaConfig, tensors: &HashMap<String, Tensor>, dir: &Path) -> Result<(), LlamaError> {
    let io = |file: PathBuf| move |source| LlamaError::Io { file, source };
    fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let config_path = dir.join("config.json");
    let mut json = config.to_hf_json()?;
    let dtype = tensors.get("model.embed_tokens.weight").map(|t| match t.kind() {
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        _ => "float32",
    });
    json["torch_dtype"] = json!(dtype.unwrap_or("float32"));
    // transformers' Llama gives o_proj a bias whenever q/k/v have one; weights with biases
    // on q/k/v alone are Qwen2's layout, and only under that name would it load them as is.
    if config.attention_bias && !tensors.contains_key("model.layers.0.self_attn.o_proj.bias") {
        json["model_type"] = json!("qwen2");
        json["architectures"] = json!(["Qwen2ForCausalLM"]);
    }
    let text = serde_json::to_string_pretty(&json).expect("a JSON value always serialises");
    fs::write(&config_path, text).map_err(io(config_path.clone()))?;

    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut list = Vec::with_capacity(names.len());
    for name in names {
        list.push((name.as_str(), tensors[name].f_to_device(Device::Cpu)?.f_contiguous()?));
    }
    let weights = dir.join(SAFETENSORS_FILE);
    Tensor::write_safetensors(&list, &weights).map_err(|source| LlamaError::Safetensors { file: weights, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_and_hf_names_map_both_ways() {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
            ("blk.12.attn_q.bias", "model.layers.12.self_attn.q_proj.bias"),
            ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
            ("blk.29.ffn_norm.weight", "model.layers.29.post_attention_layernorm.weight"),
            ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
            ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
        ];
        for (gguf, hf) in pairs {
            assert_eq!(hf_name(gguf).as_deref(), Some(hf), "{gguf}");
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.0.attn_qkv.weight"), None);
    }

    #[test]
    fn unpermute_restores_half_split_order() {
        // One head of 4 dims, 1 input: llama.cpp stores rows [a0, b0, a1, b1] for the HF
        // rows [a0, a1, b0, b1] (a = first half, b = second half).
        let stored = Tensor::from_slice(&[10.0f32, 20.0, 11.0, 21.0]).reshape([4, 1]);
        let restored = unpermute_rows(stored, 1, 4).unwrap();
        assert_eq!(Vec::<f32>::try_from(restored.reshape([-1])).unwrap(), vec![10.0, 11.0, 20.0, 21.0]);
        // Biases (one dimension), two heads of 4.
        let stored = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        let restored = unpermute_rows(stored, 2, 4).unwrap();
        assert_eq!(Vec::<f32>::try_from(restored).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn hf_rope_scaling_forms() {
        assert_eq!(parse_hf_rope_scaling(&json!({"rope_type": "default"})).unwrap(), None);
        assert_eq!(
            parse_hf_rope_scaling(&json!({"type": "linear", "factor": 2.0})).unwrap(),
            Some(RopeScaling::Linear { factor: 2.0 })
        );
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        assert_eq!(
            parse_hf_rope_scaling(&llama3).unwrap(),
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            })
        );
        assert!(parse_hf_rope_scaling(&json!({"rope_type": "yarn", "factor": 4.0})).unwrap_err().contains("yarn"));
        assert!(parse_hf_rope_scaling(&json!({"rope_type": "linear"})).unwrap_err().contains("factor"));
    }
}
