//! The Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2) on libtorch.
//!
//! Weights arrive under the names and layouts of Hugging Face's `LlamaForCausalLM`: the
//! loaders in [`super::llama_loader`] translate GGUF files and HF folders into them, and
//! [`Llama::from_tensors`] checks every shape before anything runs.
//!
//! Inference is built for one sequence at a time, token by token, on a CPU with little
//! memory bandwidth as well as on a GPU:
//! - q/k/v and gate/up projections are fused at load time, so a block costs four matrix
//!   products rather than seven, and weights are stored transposed for fast GEMV;
//! - RoPE tables are computed once for the whole context, and the half-split rotation
//!   (HF's) is one `roll` and two multiplications;
//! - the [`KvCache`] grows by doubling and is written in place, so a decode step touches
//!   only the new position;
//! - attention is libtorch's fused kernel with grouped-query support; only a prompt that
//!   follows cached positions needs an explicit mask, and only the last position goes
//!   through the output head.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, TchError, Tensor};

use super::attention_probe::AttentionProbe;
use super::decode_attention::{self, CacheView};
use super::gguf::matmul::{QuantMatrix, Threads};
use super::gguf::GgufError;

/// How RoPE frequencies are stretched for contexts longer than the model was trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (HF `rope_type: linear`, GGUF `rope.scaling.type = linear`).
    Linear { factor: f64 },
    /// Llama 3.1's scheme: high frequencies kept, low ones divided by `factor`, a smooth
    /// blend in between (HF `rope_type: llama3`).
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// One divisor per frequency (`head_dim / 2` of them). llama.cpp bakes Llama 3.1's
    /// scheme into a `rope_freqs.weight` tensor of this form instead of storing the parameters.
    FrequencyDivisors(Vec<f64>),
}

/// Hyper-parameters of a Llama-family model, named as in Hugging Face's `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Fewer than `num_heads` means grouped-query attention: each key/value head serves
    /// `num_heads / num_kv_heads` consecutive query heads.
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: f64,
    /// Longest sequence [`Llama::forward`] accepts (prompt and generated tokens together).
    pub max_position_embeddings: usize,
    /// The output head reuses the token embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2). An `o_proj.bias`, if the weights have
    /// one, is used as well.
    pub attention_bias: bool,
}

impl LlamaConfig {
    /// Checks that the numbers describe a model this code can run; the message names
    /// the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(format!(
                "num_heads ({}) must be a multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!("head_dim must be even for RoPE, got {}", self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta must be positive, got {}", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!("rms_norm_eps must be positive, got {}", self.rms_norm_eps));
        }
        if let Some(RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. }) = &self.rope_scaling {
            if !(factor.is_finite() && *factor > 0.0) {
                return Err(format!("rope_scaling.factor must be positive, got {factor}"));
            }
        }
        match &self.rope_scaling {
            Some(RopeScaling::Llama3 {
                low_freq_factor, high_freq_factor, original_max_position_embeddings, ..
            }) => {
                if !(low_freq_factor.is_finite() && *low_freq_factor > 0.0 && high_freq_factor > low_freq_factor) {
                    return Err(format!(
                        "rope_scaling needs 0 < low_freq_factor < high_freq_factor, got {low_freq_factor} and \
                         {high_freq_factor}"
                    ));
                }
                if *original_max_position_embeddings == 0 {
                    return Err("rope_scaling.original_max_position_embeddings must be positive".into());
                }
            }
            Some(RopeScaling::FrequencyDivisors(divisors)) => {
                if divisors.len() != self.head_dim / 2 {
                    return Err(format!(
                        "RoPE frequency divisors: {} given, head_dim / 2 = {} expected",
                        divisors.len(),
                        self.head_dim / 2
                    ));
                }
                if let Some(bad) = divisors.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
                    return Err(format!("RoPE frequency divisors must be positive, found {bad}"));
                }
            }
            None | Some(RopeScaling::Linear { .. }) => {}
        }
        Ok(())
    }

    /// The rotation frequency of each pair of dimensions, scaling applied.
    fn inverse_frequencies(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> =
            (0..half).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64)).collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::FrequencyDivisors(divisors)) => base.iter().zip(divisors).map(|(f, d)| f / d).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old_context = *original_max_position_embeddings as f64;
                // Wavelengths shorter than this many positions were seen in full during
                // training and stay; longer than `low_wavelen` are stretched by `factor`.
                let high_wavelen = old_context / high_freq_factor;
                let low_wavelen = old_context / low_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth =
                                (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Everything that can go wrong building or running a [`Llama`]. Errors about files name
/// the file, and the tensor or key inside it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaError {
    #[error("{file}: invalid model configuration: {message}")]
    InvalidConfig { file: PathBuf, message: String },
    #[error("{file}: unsupported model architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture { file: PathBuf, architecture: String, supported: &'static str },
    #[error("{file}: tensor `{name}` is missing")]
    MissingTensor { file: PathBuf, name: String },
    #[error("{file}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape { file: PathBuf, name: String, expected: Vec<i64>, actual: Vec<i64> },
    #[error("{file}: tensor `{name}` has element type {kind:?}, expected a floating-point type")]
    TensorKind { file: PathBuf, name: String, kind: Kind },
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the GGUF file failed; the error names the file and key or tensor.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{file}: safetensors: {source}")]
    Safetensors {
        file: PathBuf,
        #[source]
        source: TchError,
    },
    #[error("context length exceeded: {requested} positions requested, the model supports at most {limit}")]
    ContextLength { requested: usize, limit: usize },
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("forward called with no tokens")]
    EmptyInput,
    #[error("the KV cache was made by a model of another shape, device or element type")]
    CacheMismatch,
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// A linear layer's weight: a libtorch tensor, or the GGUF file's own blocks.
enum Weight {
    /// `[in_features, out_features]`, contiguous. Decoding multiplies one row by each
    /// weight, so speed is how fast the weight streams from memory; on the CPU, BLAS reads
    /// an `[in, out]` matrix at about twice the rate of HF's `[out, in]` (measured here:
    /// 5.3 against 11 ms for SmolLM2's 113 MB output head); cuBLAS takes either layout.
    Dense(Tensor),
    /// Rows of outputs in the file's encoding (CPU, f32 activations), multiplied by
    /// [`QuantMatrix::matmul`]: a token reads the file's 4.5–8.5 bits per weight instead
    /// of 32. Several parts when fused projections have different types; their outputs
    /// are concatenated.
    Quantized(Vec<QuantMatrix>),
}

/// A weight as a loader hands it over, `[out_features, in_features]`.
pub enum WeightSource {
    Tensor(Tensor),
    Quantized(QuantMatrix),
}

/// A linear layer.
struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// From weights in HF's `[out_features, in_features]` layout, stacked along the
    /// outputs (fused projections). Quantised parts stay quantised when all parts are;
    /// a mix is made dense.
    fn new(parts: Vec<WeightSource>, bias: Option<Tensor>, kind: Kind, device: Device) -> Result<Linear, TchError> {
        if parts.iter().all(|p| matches!(p, WeightSource::Quantized(_))) {
            let mut matrices: Vec<QuantMatrix> = parts
                .into_iter()
                .filter_map(|p| match p {
                    WeightSource::Quantized(m) => Some(m),
                    WeightSource::Tensor(_) => None,
                })
                .collect();
            if let Some(one) = QuantMatrix::stack(&matrices) {
                matrices = vec![one];
            }
            return Ok(Linear { weight: Weight::Quantized(matrices), bias });
        }
        let tensors = parts
            .into_iter()
            .map(|p| match p {
                WeightSource::Tensor(t) => Ok(t),
                WeightSource::Quantized(m) => dequantized(&m)?.f_to_device(device)?.f_to_kind(kind),
            })
            .collect::<Result<Vec<_>, TchError>>()?;
        let weight = if tensors.len() == 1 { tensors.into_iter().next().unwrap() } else { Tensor::f_cat(&tensors, 0)? };
        Ok(Linear { weight: Weight::Dense(weight.f_tr()?.f_contiguous()?), bias })
    }

    /// `x` is `[tokens, in_features]`.
    fn forward(&self, x: &Tensor, pool: Option<&Threads>) -> Result<Tensor, TchError> {
        let out = match (&self.weight, pool) {
            (Weight::Dense(weight_t), _) => {
                return match &self.bias {
                    Some(bias) => bias.f_addmm(x, &*weight_t),
                    None => x.f_mm(&*weight_t),
                };
            }
            (Weight::Quantized(parts), Some(pool)) => {
                let x = x.f_contiguous()?;
                let outs = parts.iter().map(|m| quantized_matmul(m, &x, pool)).collect::<Result<Vec<_>, _>>()?;
                if outs.len() == 1 {
                    outs.into_iter().next().unwrap()
                } else {
                    Tensor::f_cat(&outs, 1)?
                }
            }
            (Weight::Quantized(_), None) => {
                return Err(TchError::Kind("a quantised weight needs the model's thread pool".into()))
            }
        };
        match &self.bias {
            Some(bias) => out.f_add(bias),
            None => Ok(out),
        }
    }

    fn numel(&self) -> usize {
        let weights = match &self.weight {
            Weight::Dense(w) => w.numel(),
            Weight::Quantized(parts) => parts.iter().map(|m| m.rows() * m.cols()).sum(),
        };
        weights + self.bias.as_ref().map_or(0, Tensor::numel)
    }

    /// Bytes one product reads from the weight.
    fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.numel() * w.kind().elt_size_in_bytes(),
            Weight::Quantized(parts) => parts.iter().map(QuantMatrix::byte_len).sum(),
        }
    }

    fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized(_))
    }
}

/// `x · mᵀ` for `x` `[t, cols]`, contiguous f32 on the CPU.
fn quantized_matmul(m: &QuantMatrix, x: &Tensor, pool: &Threads) -> Result<Tensor, TchError> {
    let size = x.size();
    if x.kind() != Kind::Float || x.device() != Device::Cpu || size.len() != 2 || size[1] as usize != m.cols() {
        return Err(TchError::Shape(format!(
            "quantised product: input {:?} ({:?} on {:?}) does not meet a [{}, {}] weight's needs",
            size,
            x.kind(),
            x.device(),
            m.rows(),
            m.cols()
        )));
    }
    let t = size[0] as usize;
    let out = Tensor::f_empty([t as i64, m.rows() as i64], (Kind::Float, Device::Cpu))?;
    // SAFETY: `x` is a contiguous f32 CPU tensor of t × cols elements (checked above) and
    // `out` a fresh contiguous one of t × rows; both outlive the borrow, and nothing else
    // reads or writes `out` until `matmul` returns.
    let (input, output) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, t * m.cols()),
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, t * m.rows()),
        )
    };
    m.matmul(input, t, output, pool);
    Ok(out)
}

/// A quantised matrix as a dense f32 tensor `[rows, cols]` (for the rare mixed fusion).
fn dequantized(m: &QuantMatrix) -> Result<Tensor, TchError> {
    let mut values = vec![0f32; m.rows() * m.cols()];
    for (r, row) in values.chunks_mut(m.cols()).enumerate() {
        m.dequantize_row(r, row);
    }
    Tensor::f_from_slice(&values)?.f_reshape([m.rows() as i64, m.cols() as i64])
}

/// One transformer block, with its projections fused.
struct Block {
    input_norm: Tensor,
    /// q, k and v stacked along the output dimension, in that order.
    qkv: Linear,
    o_proj: Linear,
    post_attention_norm: Tensor,
    /// gate and up stacked along the output dimension, in that order.
    gate_up: Linear,
    down: Linear,
}

/// The key/value history of one sequence. Made by [`Llama::new_cache`], advanced by
/// [`Llama::forward`].
///
/// Storage is `[kv_heads, capacity, head_dim]` per layer and grows by doubling, so a
/// decode step writes one row in place and the occasional growth copies amortise away.
pub struct KvCache {
    /// `(keys, values)` per layer; empty until the first forward.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    signature: CacheSignature,
}

/// What a cache must agree on with the model that fills it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CacheSignature {
    num_layers: usize,
    num_kv_heads: usize,
    head_dim: usize,
    max_len: usize,
    device: Device,
    kind: Kind,
}

impl KvCache {
    /// Positions held (prompt and generated tokens so far).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache holds without growing.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets everything but keeps the memory, for the next sequence.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `len` positions, so that a sequence sharing that prefix can reuse
    /// them. A `len` beyond the current length changes nothing.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes of key/value storage held (all of the capacity, not only the positions in use).
    pub fn bytes(&self) -> usize {
        let sig = self.signature;
        2 * sig.num_layers * sig.num_kv_heads * self.capacity * sig.head_dim * sig.kind.elt_size_in_bytes()
    }

    /// A new cache holding a copy of the first `len` positions (at most the current
    /// length), for another sequence that starts with the same tokens.
    pub fn fork(&self, len: usize) -> Result<KvCache, TchError> {
        let len = len.min(self.len);
        let mut copy = KvCache { layers: Vec::new(), len: 0, capacity: 0, signature: self.signature };
        if len == 0 {
            return Ok(copy);
        }
        copy.reserve(len)?;
        for ((keys, values), (old_keys, old_values)) in copy.layers.iter().zip(&self.layers) {
            keys.f_narrow(1, 0, len as i64)?.f_copy_(&old_keys.f_narrow(1, 0, len as i64)?)?;
            values.f_narrow(1, 0, len as i64)?.f_copy_(&old_values.f_narrow(1, 0, len as i64)?)?;
        }
        copy.len = len;
        Ok(copy)
    }

    /// Makes room for `needed` positions in total.
    fn reserve(&mut self, needed: usize) -> Result<(), TchError> {
        if needed <= self.capacity {
            return Ok(());
        }
        const MIN_CAPACITY: usize = 64;
        let sig = self.signature;
        let capacity = needed.next_power_of_two().max(MIN_CAPACITY).min(sig.max_len).max(needed);
        let shape = [sig.num_kv_heads as i64, capacity as i64, sig.head_dim as i64];
        let mut layers = Vec::with_capacity(sig.num_layers);
        for layer in 0..sig.num_layers {
            // Rows past `len` are never read, so they need no initialising.
            let keys = Tensor::f_empty(shape, (sig.kind, sig.device))?;
            let values = Tensor::f_empty(shape, (sig.kind, sig.device))?;
            if self.len > 0 {
                let (old_keys, old_values) = &self.layers[layer];
                keys.f_narrow(1, 0, self.len as i64)?.f_copy_(&old_keys.f_narrow(1, 0, self.len as i64)?)?;
                values.f_narrow(1, 0, self.len as i64)?.f_copy_(&old_values.f_narrow(1, 0, self.len as i64)?)?;
            }
            layers.push((keys, values));
        }
        self.layers = layers;
        self.capacity = capacity;
        Ok(())
    }
}

impl fmt::Debug for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache").field("len", &self.len).field("capacity", &self.capacity).finish()
    }
}

/// A Llama-family causal language model, ready to run.
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    kind: Kind,
    embeddings: Embeddings,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    /// `cos` of every position's angles, `[max_positions, head_dim]`, each half repeating
    /// the `head_dim / 2` frequencies.
    rope_cos: Tensor,
    /// `sin` likewise, negated in the first half: with it the half-split rotation is
    /// `x * cos + roll(x, head_dim / 2) * sin`, which saves a negation per block.
    rope_sin: Tensor,
    parameter_count: usize,
    /// The threads quantised products run on (libtorch's own pool is not reachable from
    /// here); `None` when no weight is quantised.
    pool: Option<Threads>,
}

/// Where token embeddings come from.
enum Embeddings {
    /// `[vocab, hidden]`.
    Dense(Tensor),
    /// `[vocab, hidden]` in the file's encoding; rows are decoded as tokens need them.
    Quantized(QuantMatrix),
    /// The output head's weight (tied): its rows serve as embeddings, and a row gather
    /// costs little where a second copy of the matrix would not.
    Tied,
}

impl fmt::Debug for Llama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("device", &self.device)
            .field("kind", &self.kind)
            .field("parameter_count", &self.parameter_count)
            .finish()
    }
}

/// Takes the tensors of the model out of the map, checking each.
struct TensorTaker<'a> {
    tensors: HashMap<String, Tensor>,
    quantized: HashMap<String, QuantMatrix>,
    file: &'a Path,
    device: Device,
    kind: Kind,
}

impl TensorTaker<'_> {
    /// A 2-D weight `[out, in]`: kept in its quantised form when the loader gave it so.
    fn take_weight(&mut self, name: &str, shape: &[usize]) -> Result<WeightSource, LlamaError> {
        match self.quantized.remove(name) {
            Some(m) if [m.rows(), m.cols()] == shape => Ok(WeightSource::Quantized(m)),
            Some(m) => Err(LlamaError::TensorShape {
                file: self.file.to_path_buf(),
                name: name.to_string(),
                expected: shape.iter().map(|&d| d as i64).collect(),
                actual: vec![m.rows() as i64, m.cols() as i64],
            }),
            None => self.take(name, shape).map(WeightSource::Tensor),
        }
    }

    /// The tensor `name`, which must have `shape`, converted to the compute kind on the
    /// compute device.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LlamaError> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| LlamaError::MissingTensor { file: self.file.to_path_buf(), name: name.to_string() })?;
        let expected: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let actual = tensor.size();
        if actual != expected {
            return Err(LlamaError::TensorShape {
                file: self.file.to_path_buf(),
                name: name.to_string(),
                expected,
                actual,
            });
        }
        if !tensor.is_floating_point() {
            return Err(LlamaError::TensorKind {
                file: self.file.to_path_buf(),
                name: name.to_string(),
                kind: tensor.kind(),
            });
        }
        Ok(tensor.f_to_device(self.device)?.f_to_kind(self.kind)?)
    }

    fn take_optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>, LlamaError> {
        if self.tensors.contains_key(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Concatenates the rows of several weights into one, so one product computes them all.
fn fuse(parts: &[Tensor]) -> Result<Tensor, TchError> {
    Tensor::f_cat(parts, 0)
}

impl Llama {
    /// Builds the model from weights under Hugging Face names (`model.embed_tokens.weight`,
    /// `model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`),
    /// converted to `kind` on `device`. Every shape is checked against `config`; a missing
    /// or mis-shaped tensor is an error naming it and `source`. Tensors the model does not
    /// use (such as stored rotary tables) are ignored.
    pub fn from_tensors(
        config: LlamaConfig,
        tensors: HashMap<String, Tensor>,
        source: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<Llama, LlamaError> {
        Llama::from_weights(config, tensors, HashMap::new(), source, device, kind)
    }

    /// [`Llama::from_tensors`], with some 2-D weights kept in their GGUF encoding
    /// (`quantized`, same names): their products run on [`QuantMatrix::matmul`], which
    /// needs the CPU and f32 (`kind` `Float`).
    pub fn from_weights(
        config: LlamaConfig,
        tensors: HashMap<String, Tensor>,
        quantized: HashMap<String, QuantMatrix>,
        source: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<Llama, LlamaError> {
        config.validate().map_err(|message| LlamaError::InvalidConfig { file: source.to_path_buf(), message })?;
        if !quantized.is_empty() && (device != Device::Cpu || kind != Kind::Float) {
            return Err(LlamaError::InvalidConfig {
                file: source.to_path_buf(),
                message: format!("quantised weights run on the CPU in f32, not {kind:?} on {device:?}"),
            });
        }
        let _guard = tch::no_grad_guard();
        let c = &config;
        let hidden = c.hidden_size;
        let q_dim = c.num_heads * c.head_dim;
        let kv_dim = c.num_kv_heads * c.head_dim;
        let mut taker = TensorTaker { tensors, quantized, file: source, device, kind };
        let linear = |parts: Vec<WeightSource>, bias: Option<Tensor>| Linear::new(parts, bias, kind, device);

        let embed_tokens = taker.take_weight("model.embed_tokens.weight", &[c.vocab_size, hidden])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let input_norm = taker.take(&format!("{p}.input_layernorm.weight"), &[hidden])?;
            let q = taker.take_weight(&format!("{p}.self_attn.q_proj.weight"), &[q_dim, hidden])?;
            let k = taker.take_weight(&format!("{p}.self_attn.k_proj.weight"), &[kv_dim, hidden])?;
            let v = taker.take_weight(&format!("{p}.self_attn.v_proj.weight"), &[kv_dim, hidden])?;
            let qkv_bias = if c.attention_bias {
                let qb = taker.take(&format!("{p}.self_attn.q_proj.bias"), &[q_dim])?;
                let kb = taker.take(&format!("{p}.self_attn.k_proj.bias"), &[kv_dim])?;
                let vb = taker.take(&format!("{p}.self_attn.v_proj.bias"), &[kv_dim])?;
                Some(fuse(&[qb, kb, vb])?)
            } else {
                None
            };
            let o_weight = taker.take_weight(&format!("{p}.self_attn.o_proj.weight"), &[hidden, q_dim])?;
            let o_bias = if c.attention_bias {
                taker.take_optional(&format!("{p}.self_attn.o_proj.bias"), &[hidden])?
            } else {
                None
            };
            let post_attention_norm = taker.take(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?;
            let gate = taker.take_weight(&format!("{p}.mlp.gate_proj.weight"), &[c.intermediate_size, hidden])?;
            let up = taker.take_weight(&format!("{p}.mlp.up_proj.weight"), &[c.intermediate_size, hidden])?;
            let down = taker.take_weight(&format!("{p}.mlp.down_proj.weight"), &[hidden, c.intermediate_size])?;
            layers.push(Block {
                input_norm,
                qkv: linear(vec![q, k, v], qkv_bias)?,
                o_proj: linear(vec![o_weight], o_bias)?,
                post_attention_norm,
                gate_up: linear(vec![gate, up], None)?,
                down: linear(vec![down], None)?,
            });
        }
        let norm = taker.take("model.norm.weight", &[hidden])?;
        let (embeddings, lm_head) = if c.tie_word_embeddings {
            (Embeddings::Tied, linear(vec![embed_tokens], None)?)
        } else {
            let head = taker.take_weight("lm_head.weight", &[c.vocab_size, hidden])?;
            let embeddings = match embed_tokens {
                WeightSource::Tensor(t) => Embeddings::Dense(t),
                WeightSource::Quantized(m) => Embeddings::Quantized(m),
            };
            (embeddings, linear(vec![head], None)?)
        };
        if !taker.tensors.is_empty() || !taker.quantized.is_empty() {
            let mut unused: Vec<&String> = taker.tensors.keys().chain(taker.quantized.keys()).collect();
            unused.sort();
            tracing::debug!(file = %source.display(), ?unused, "tensors not used by the model");
        }

        let (rope_cos, rope_sin) = rope_tables(c, device, kind)?;
        let parameter_count = match &embeddings {
            Embeddings::Dense(t) => t.numel(),
            Embeddings::Quantized(m) => m.rows() * m.cols(),
            Embeddings::Tied => 0,
        } + norm.numel()
            + lm_head.numel()
            + layers
                .iter()
                .map(|b| {
                    b.input_norm.numel()
                        + b.qkv.numel()
                        + b.o_proj.numel()
                        + b.post_attention_norm.numel()
                        + b.gate_up.numel()
                        + b.down.numel()
                })
                .sum::<usize>();
        let any_quantized = lm_head.is_quantized()
            || matches!(embeddings, Embeddings::Quantized(_))
            || layers.iter().any(|b| [&b.qkv, &b.o_proj, &b.gate_up, &b.down].iter().any(|l| l.is_quantized()));
        let pool = if any_quantized {
            // As many threads as libtorch uses (the model thread set its count).
            let threads = tch::get_num_threads().max(1) as usize;
            let pool =
                Threads::new(threads).map_err(|e| TchError::Kind(format!("starting the matmul threads: {e}")))?;
            Some(pool)
        } else {
            None
        };
        Ok(Llama { config, device, kind, embeddings, layers, norm, lm_head, rope_cos, rope_sin, parameter_count, pool })
    }

    /// A model with random weights drawn from `seed`, for tests and for comparing devices:
    /// the weights are drawn on the CPU, so a seed gives the same model on every device.
    /// Linear weights are uniform within ±1/√fan_in, which keeps activations of order one
    /// at any depth; norm weights are near one.
    ///
    /// # Panics
    /// If `config` does not pass [`LlamaConfig::validate`].
    pub fn random(config: LlamaConfig, seed: i64, device: Device, kind: Kind) -> Llama {
        if let Err(message) = config.validate() {
            panic!("Llama::random: invalid configuration: {message}");
        }
        let mut rng = StdRng::seed_from_u64(seed as u64);
        let mut tensors = HashMap::new();
        let mut add = |name: String, shape: &[usize], bound: f64, centre: f64| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| (centre + rng.gen_range(-bound..=bound)) as f32).collect();
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            tensors.insert(name, Tensor::from_slice(&data).reshape(dims));
        };
        let c = &config;
        let hidden = c.hidden_size;
        let q_dim = c.num_heads * c.head_dim;
        let kv_dim = c.num_kv_heads * c.head_dim;
        let fan = |n: usize| 1.0 / (n as f64).sqrt();
        add("model.embed_tokens.weight".into(), &[c.vocab_size, hidden], 1.0, 0.0);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            add(format!("{p}.input_layernorm.weight"), &[hidden], 0.1, 1.0);
            add(format!("{p}.self_attn.q_proj.weight"), &[q_dim, hidden], fan(hidden), 0.0);
            add(format!("{p}.self_attn.k_proj.weight"), &[kv_dim, hidden], fan(hidden), 0.0);
            add(format!("{p}.self_attn.v_proj.weight"), &[kv_dim, hidden], fan(hidden), 0.0);
            if c.attention_bias {
                add(format!("{p}.self_attn.q_proj.bias"), &[q_dim], 0.1, 0.0);
                add(format!("{p}.self_attn.k_proj.bias"), &[kv_dim], 0.1, 0.0);
                add(format!("{p}.self_attn.v_proj.bias"), &[kv_dim], 0.1, 0.0);
            }
            add(format!("{p}.self_attn.o_proj.weight"), &[hidden, q_dim], fan(q_dim), 0.0);
            add(format!("{p}.post_attention_layernorm.weight"), &[hidden], 0.1, 1.0);
            add(format!("{p}.mlp.gate_proj.weight"), &[c.intermediate_size, hidden], fan(hidden), 0.0);
            add(format!("{p}.mlp.up_proj.weight"), &[c.intermediate_size, hidden], fan(hidden), 0.0);
            add(format!("{p}.mlp.down_proj.weight"), &[hidden, c.intermediate_size], fan(c.intermediate_size), 0.0);
        }
        add("model.norm.weight".into(), &[hidden], 0.1, 1.0);
        if !c.tie_word_embeddings {
            add("lm_head.weight".into(), &[c.vocab_size, hidden], fan(hidden), 0.0);
        }
        Llama::from_tensors(config, tensors, Path::new("<random>"), device, kind)
            .expect("random weights are generated with the configured shapes")
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Distinct parameters; a tied output head is counted once.
    pub fn parameter_count(&self) -> usize {
        self.parameter_count
    }

    /// An empty cache for one sequence. It takes no memory until the first forward.
    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: Vec::new(), len: 0, capacity: 0, signature: self.cache_signature() }
    }

    fn cache_signature(&self) -> CacheSignature {
        CacheSignature {
            num_layers: self.config.num_layers,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            max_len: self.config.max_position_embeddings,
            device: self.device,
            kind: self.kind,
        }
    }

    /// Runs `tokens` after what `cache` holds and returns the logits of the last position,
    /// as f32 on the CPU (`vocab_size` values). Many tokens at once is a prefill, one is a
    /// decode step. On error the cache keeps its previous length.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, LlamaError> {
        self.forward_probed(tokens, cache, None)
    }

    /// [`Llama::forward`], adding the last token's attention to `probe` when one is given
    /// (see [`AttentionProbe`]).
    pub fn forward_probed(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        probe: Option<&mut AttentionProbe>,
    ) -> Result<Vec<f32>, LlamaError> {
        if tokens.is_empty() {
            return Err(LlamaError::EmptyInput);
        }
        if cache.signature != self.cache_signature() {
            return Err(LlamaError::CacheMismatch);
        }
        let limit = self.config.max_position_embeddings;
        let requested = cache.len + tokens.len();
        if requested > limit {
            return Err(LlamaError::ContextLength { requested, limit });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(LlamaError::TokenOutOfRange { id, vocab_size: self.config.vocab_size });
        }
        let _guard = tch::no_grad_guard();
        self.pick_torch_threads();
        let logits = self.forward_tensor(tokens, cache, probe)?;
        let logits = logits.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_reshape([-1])?;
        let logits = Vec::<f32>::try_from(&logits)?;
        cache.len = requested;
        Ok(logits)
    }

    /// The body of [`Llama::forward`], after validation: logits `[1, vocab]` in the compute kind.
    fn forward_tensor(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        mut probe: Option<&mut AttentionProbe>,
    ) -> Result<Tensor, TchError> {
        let c = &self.config;
        let past = cache.len as i64;
        let t = tokens.len() as i64;
        let total = past + t;
        cache.reserve(total as usize)?;

        let ids: Vec<i64> = tokens.iter().map(|&id| id as i64).collect();
        let ids = Tensor::f_from_slice(&ids)?.f_to_device(self.device)?;
        let mut x = self.embed(tokens, &ids)?; // [t, hidden]

        // Positions past..total, shaped to broadcast over heads: [t, 1, head_dim].
        let cos = self.rope_cos.f_narrow(0, past, t)?.f_unsqueeze(1)?;
        let sin = self.rope_sin.f_narrow(0, past, t)?.f_unsqueeze(1)?;
        // Query i (at position past + i) may see keys 0..=past + i. A single token sees
        // everything; a prompt on an empty cache is what `is_causal` means (and the GPU
        // kernels run it fastest); only a prompt after cached positions needs a mask.
        let causal = t > 1 && past == 0;
        let mask = if t > 1 && past > 0 {
            Some(Tensor::f_full([t, total], f64::NEG_INFINITY, (self.kind, self.device))?.f_triu(past + 1)?)
        } else {
            None
        };

        let heads = c.num_heads as i64;
        let kv_heads = c.num_kv_heads as i64;
        let head_dim = c.head_dim as i64;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let eps = c.rms_norm_eps;
        let inter = c.intermediate_size as i64;
        let pool = self.pool.as_ref();

        let probed_from = self.layers.len().saturating_sub(probe.as_ref().map_or(0, |p| p.layers()));
        for (layer, (block, (cache_k, cache_v))) in self.layers.iter().zip(&cache.layers).enumerate() {
            // Attention.
            let h = x.f_rms_norm([c.hidden_size as i64], Some(&block.input_norm), eps)?;
            let qkv = block.qkv.forward(&h, pool)?.f_view([t, heads + 2 * kv_heads, head_dim])?;
            // q and k are adjacent, so one rotation covers both.
            let qk = qkv.f_narrow(1, 0, heads + kv_heads)?;
            let rotated = qk.f_roll([head_dim / 2], [-1])?;
            let mut qk = qk.f_mul(&cos)?;
            qk = qk.f_addcmul_(&rotated, &sin)?;
            let q = qk.f_narrow(1, 0, heads)?;
            let k = qk.f_narrow(1, heads, kv_heads)?;
            let v = qkv.f_narrow(1, heads + kv_heads, kv_heads)?;
            cache_k.f_narrow(1, past, t)?.f_copy_(&k.f_transpose(0, 1)?)?;
            cache_v.f_narrow(1, past, t)?.f_copy_(&v.f_transpose(0, 1)?)?;
            let keys = cache_k.f_narrow(1, 0, total)?; // [kv_heads, total, head_dim]
            let values = cache_v.f_narrow(1, 0, total)?;
            if let Some(probe) = probe.as_deref_mut().filter(|_| layer >= probed_from) {
                // The last position's query: the one whose logits choose the next token.
                probe.observe(&q.f_narrow(0, t - 1, 1)?.f_reshape([heads, head_dim])?, &keys, scale)?;
            }

            let attended = if let (1, Some(threads)) = (t, pool) {
                let query = Vec::<f32>::try_from(&q.f_contiguous()?.f_reshape([-1])?)?;
                let capacity = cache_k.size()[1] as usize;
                let n = (kv_heads * head_dim) as usize * capacity;
                // SAFETY: the cache's tensors are contiguous f32 `[kv_heads, capacity,
                // head_dim]` on the CPU (made so by `KvCache::reserve`, and a quantised
                // model is f32 on the CPU), alive for this call, and not written during it.
                let view = unsafe {
                    CacheView {
                        keys: std::slice::from_raw_parts(cache_k.data_ptr() as *const f32, n),
                        values: std::slice::from_raw_parts(cache_v.data_ptr() as *const f32, n),
                        capacity,
                    }
                };
                let out = decode_attention::attend(
                    threads,
                    &query,
                    &view,
                    total as usize,
                    heads as usize,
                    kv_heads as usize,
                    scale as f32,
                );
                Tensor::f_from_slice(&out)?.f_reshape([1, heads * head_dim])?
            } else if self.device == Device::Cpu && (t == 1 || self.pool.is_some()) {
                attend_in_blocks(&q, &keys, &values, past, kv_heads, scale, self.kind)?
            } else {
                // libtorch's fused attention: `enable_gqa` shares each key/value head among its
                // query heads, and the fused kernels never materialise the prefill's
                // [t, total] score matrix (twice the prefill speed of a plain softmax at 1000
                // tokens on the CPU).
                Tensor::f_scaled_dot_product_attention(
                    &q.f_transpose(0, 1)?.f_unsqueeze(0)?, // [1, heads, t, head_dim]
                    &keys.f_unsqueeze(0)?,
                    &values.f_unsqueeze(0)?,
                    mask.as_ref(),
                    0.0,
                    causal,
                    Some(scale),
                    true,
                )?
                .f_squeeze_dim(0)?
                .f_transpose(0, 1)?
                .f_reshape([t, heads * head_dim])?
            };
            let _ = x.f_add_(&block.o_proj.forward(&attended, pool)?)?;

            // SwiGLU feed-forward.
            let h = x.f_rms_norm([c.hidden_size as i64], Some(&block.post_attention_norm), eps)?;
            let gate_up = block.gate_up.forward(&h, pool)?;
            let mut act = gate_up.f_narrow(1, 0, inter)?.f_silu()?;
            let _ = act.f_mul_(&gate_up.f_narrow(1, inter, inter)?)?;
            let _ = x.f_add_(&block.down.forward(&act, pool)?)?;
        }

        let last = x.f_narrow(0, t - 1, 1)?.f_rms_norm([c.hidden_size as i64], Some(&self.norm), eps)?;
        self.lm_head.forward(&last, pool)
    }

    /// With quantised weights the products run on [`Self::pool`], and libtorch runs on
    /// this thread alone: what is left to it (norms, RoPE, attention) is small at decode,
    /// where waking its OpenMP threads for each op cost more than they saved (measured:
    /// 85 against 99 tokens/s decoding SmolLM2 on two cores); and one thread count for
    /// every call keeps a position's numbers the same however its prompt was split (see
    /// [`attend_in_blocks`]). The setting is per thread (OpenMP's), and the model is only
    /// ever run by one; it is made on the first call because the model may be loaded on
    /// another thread than the one that runs it.
    fn pick_torch_threads(&self) {
        if self.pool.is_some() && self.device == Device::Cpu && tch::get_num_threads() != 1 {
            tch::set_num_threads(1);
        }
    }

    /// Positions of a cached prefix are reusable in multiples of this: see [`attend_in_blocks`].
    pub fn reuse_granularity(&self) -> usize {
        if self.device == Device::Cpu {
            ATTENTION_BLOCK
        } else {
            1
        }
    }

    /// The embeddings of `tokens` (`ids` is them as a tensor on the device), `[t, hidden]`.
    fn embed(&self, tokens: &[u32], ids: &Tensor) -> Result<Tensor, TchError> {
        let quantized_rows = |m: &QuantMatrix| {
            let mut values = vec![0f32; tokens.len() * m.cols()];
            for (row, &id) in values.chunks_mut(m.cols()).zip(tokens) {
                m.dequantize_row(id as usize, row);
            }
            Tensor::f_from_slice(&values)?.f_reshape([tokens.len() as i64, m.cols() as i64])
        };
        match (&self.embeddings, &self.lm_head.weight) {
            (Embeddings::Dense(rows), _) => rows.f_index_select(0, ids),
            (Embeddings::Quantized(m), _) => quantized_rows(m),
            (Embeddings::Tied, Weight::Dense(weight_t)) => weight_t.f_index_select(1, ids)?.f_tr()?.f_contiguous(),
            (Embeddings::Tied, Weight::Quantized(parts)) => match parts.as_slice() {
                [m] => quantized_rows(m),
                _ => Err(TchError::Kind("a tied output head is one matrix".into())),
            },
        }
    }

    /// Bytes of weights a decode step reads (every linear layer and the output head).
    pub fn weight_bytes_per_token(&self) -> usize {
        self.lm_head.weight_bytes()
            + self
                .layers
                .iter()
                .map(|b| {
                    b.qkv.weight_bytes() + b.o_proj.weight_bytes() + b.gate_up.weight_bytes() + b.down.weight_bytes()
                })
                .sum::<usize>()
    }

    /// Whether products run on the file's quantised blocks.
    pub fn is_quantized(&self) -> bool {
        self.pool.is_some()
    }
}

/// Queries are attended in blocks of this many positions, aligned to multiples of it (see
/// [`attend_in_blocks`]); a reused cache prefix is cut to a multiple of it.
pub const ATTENTION_BLOCK: usize = 64;

/// Attention of queries `q` (`[t, heads, head_dim]`, at positions `past..past + t`) over
/// the cached `keys` and `values` (`[kv_heads, past + t, head_dim]`), on the CPU; returns
/// `[t, heads * head_dim]`.
///
/// Two reasons to do it here rather than in libtorch's fused kernel:
/// - grouped-query attention without copies: the queries of a key/value head's group are
///   viewed as rows of one matrix, where the fused kernel first copies every key and value
///   head out to its query heads (decoding at 1,000 cached positions ran at half the speed
///   of 100 that way);
/// - the same numbers however a prompt is split: queries go in blocks aligned to absolute
///   positions (multiples of [`ATTENTION_BLOCK`]), so a position is computed by the same
///   products over the same operands whether the whole prompt runs at once or a cached,
///   aligned prefix is reused; with the quantised products (row by row by design) a
///   session's cache then changes no reply (tests/session_cache.rs).
fn attend_in_blocks(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    past: i64,
    kv_heads: i64,
    scale: f64,
    kind: Kind,
) -> Result<Tensor, TchError> {
    let (t, heads, head_dim) = q.size3()?;
    let group = heads / kv_heads;
    let block = ATTENTION_BLOCK as i64;
    let mut outputs = Vec::new();
    let mut start = past;
    while start < past + t {
        let end = ((start / block + 1) * block).min(past + t);
        let rows = end - start;
        // [rows, heads, hd] → [kv_heads, group * rows, hd]: head h is (h / group, h % group).
        let qb = q
            .f_narrow(0, start - past, rows)?
            .f_reshape([rows, kv_heads, group, head_dim])?
            .f_permute([1, 2, 0, 3])?
            .f_reshape([kv_heads, group * rows, head_dim])?;
        let kb = keys.f_narrow(1, 0, end)?;
        let vb = values.f_narrow(1, 0, end)?;
        let mut scores = qb.f_matmul(&kb.f_transpose(1, 2)?)?.f_mul_scalar(scale)?; // [kv, group*rows, end]
        if rows > 1 {
            // Row r (position start + r) sees keys 0..=start + r.
            let mask = Tensor::f_full([rows, end], f64::NEG_INFINITY, (kind, Device::Cpu))?.f_triu(start + 1)?;
            scores =
                scores.f_view([kv_heads, group, rows, end])?.f_add(&mask)?.f_view([kv_heads, group * rows, end])?;
        }
        let out = scores.f_softmax(-1, kind)?.f_matmul(&vb)?; // [kv, group*rows, hd]
        outputs.push(
            out.f_view([kv_heads, group, rows, head_dim])?
                .f_permute([2, 0, 1, 3])?
                .f_reshape([rows, heads * head_dim])?,
        );
        start = end;
    }
    if outputs.len() == 1 {
        Ok(outputs.pop().unwrap())
    } else {
        Tensor::f_cat(&outputs, 0)
    }
}

/// The RoPE tables for every position the model accepts; see the fields of [`Llama`].
fn rope_tables(config: &LlamaConfig, device: Device, kind: Kind) -> Result<(Tensor, Tensor), TchError> {
    let frequencies = config.inverse_frequencies();
    let half = frequencies.len();
    let positions = config.max_position_embeddings;
    let mut cos = Vec::with_capacity(positions * 2 * half);
    let mut sin = Vec::with_capacity(positions * 2 * half);
    for p in 0..positions {
        // Angles in f64: at positions in the tens of thousands f32 would lose the low bits.
        let angles = frequencies.iter().map(|f| p as f64 * f);
        cos.extend(angles.clone().map(|a| a.cos() as f32));
        cos.extend(angles.clone().map(|a| a.cos() as f32));
        sin.extend(angles.clone().map(|a| -a.sin() as f32));
        sin.extend(angles.map(|a| a.sin() as f32));
    }
    let shape = [positions as i64, 2 * half as i64];
    let cos = Tensor::f_from_slice(&cos)?.f_reshape(shape)?.f_to_device(device)?.f_to_kind(kind)?;
    let sin = Tensor::f_from_slice(&sin)?.f_reshape(shape)?.f_to_device(device)?.f_to_kind(kind)?;
    Ok((cos, sin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 100,
            hidden_size: 64,
            intermediate_size: 96,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 10000.0,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            attention_bias: true,
        }
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut c = tiny_config();
        c.num_kv_heads = 3;
        assert!(c.validate().unwrap_err().contains("num_kv_heads"));
        let mut c = tiny_config();
        c.head_dim = 15;
        assert!(c.validate().unwrap_err().contains("head_dim"));
        let mut c = tiny_config();
        c.rope_scaling = Some(RopeScaling::FrequencyDivisors(vec![1.0; 3]));
        assert!(c.validate().unwrap_err().contains("divisors"));
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        // Llama 3.1's published parameters on a 128-dim head, base 500000.
        let mut c = tiny_config();
        c.head_dim = 128;
        c.rope_theta = 500000.0;
        let plain = c.inverse_frequencies();
        c.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = c.inverse_frequencies();
        // Frequency 1 rad/position: wavelength 2π < 8192/4, kept.
        assert_eq!(scaled[0], plain[0]);
        // The lowest frequency has a wavelength far above 8192: divided by 8.
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-15);
        // In between, never outside [freq/8, freq].
        for (s, p) in scaled.iter().zip(&plain) {
            assert!(*s <= *p && *s >= p / 8.0 - 1e-18);
        }
    }

    #[test]
    fn cache_grows_and_keeps_its_contents() {
        let model = Llama::random(tiny_config(), 7, Device::Cpu, Kind::Float);
        let mut cache = model.new_cache();
        let tokens: Vec<u32> = (0..70).map(|i| (i * 7 % 100) as u32).collect();
        // 60 positions fit the first allocation (64); 70 force a doubling mid-sequence.
        model.forward(&tokens[..60], &mut cache).unwrap();
        assert_eq!(cache.capacity(), 64);
        let incremental = model.forward(&tokens[60..], &mut cache).unwrap();
        assert_eq!(cache.len(), 70);
        assert_eq!(cache.capacity(), 128);
        let mut fresh = model.new_cache();
        let whole = model.forward(&tokens, &mut fresh).unwrap();
        let diff = incremental.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn truncate_rewinds_to_a_shared_prefix() {
        let model = Llama::random(tiny_config(), 3, Device::Cpu, Kind::Float);
        let mut cache = model.new_cache();
        let first = model.forward(&[5, 6, 7], &mut cache).unwrap();
        model.forward(&[8, 9], &mut cache).unwrap();
        cache.truncate(2);
        let again = model.forward(&[7], &mut cache).unwrap();
        assert_eq!(cache.len(), 3);
        let diff = first.iter().zip(&again).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn a_fork_continues_like_the_original() {
        let model = Llama::random(tiny_config(), 5, Device::Cpu, Kind::Float);
        let mut cache = model.new_cache();
        model.forward(&[4, 8, 15, 16, 23], &mut cache).unwrap();
        let mut fork = cache.fork(3).unwrap();
        assert_eq!((fork.len(), cache.len()), (3, 5));
        assert_eq!(fork.bytes(), 2 * 2 * 2 * fork.capacity() * 16 * 4);
        let forked = model.forward(&[42], &mut fork).unwrap();
        let mut fresh = model.new_cache();
        let whole = model.forward(&[4, 8, 15, 42], &mut fresh).unwrap();
        let diff = forked.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "max difference {diff}");
        // The original is untouched by the fork's writes.
        let mut again = cache.fork(5).unwrap();
        let next = model.forward(&[42], &mut again).unwrap();
        let mut fresh = model.new_cache();
        let expected = model.forward(&[4, 8, 15, 16, 23, 42], &mut fresh).unwrap();
        let diff = next.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn bad_input_is_an_error_and_leaves_the_cache_alone() {
        let model = Llama::random(tiny_config(), 1, Device::Cpu, Kind::Float);
        let mut cache = model.new_cache();
        model.forward(&[1, 2], &mut cache).unwrap();
        assert!(matches!(model.forward(&[], &mut cache), Err(LlamaError::EmptyInput)));
        assert!(matches!(
            model.forward(&[100], &mut cache),
            Err(LlamaError::TokenOutOfRange { id: 100, vocab_size: 100 })
        ));
        let long = vec![3u32; 127];
        let err = model.forward(&long, &mut cache).unwrap_err();
        assert!(matches!(err, LlamaError::ContextLength { requested: 129, limit: 128 }), "{err}");
        assert!(err.to_string().contains("128"));
        assert_eq!(cache.len(), 2);
        let mut other = tiny_config();
        other.num_layers = 1;
        let other = Llama::random(other, 1, Device::Cpu, Kind::Float);
        assert!(matches!(other.forward(&[1], &mut cache), Err(LlamaError::CacheMismatch)));
    }
}
