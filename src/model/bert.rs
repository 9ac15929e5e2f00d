//! The sentence encoder behind embeddings: a BERT encoder run in libtorch, with
//! sentence-transformers' pooling and normalisation on top.
//!
//! It loads a Hugging Face-style folder (for instance all-MiniLM-L6-v2):
//! - `config.json`: the BERT hyper-parameters;
//! - `model.safetensors`, or failing that `pytorch_model.bin`, which libtorch reads only
//!   when it is a zip-format `torch.save` of a plain dict (Hugging Face's are not: those
//!   get an error that says to convert them);
//! - `modules.json`, `1_Pooling/config.json` and `sentence_bert_config.json`: how
//!   sentence-transformers turns token states into one vector (pooling, normalisation,
//!   maximum input length).
//!
//! Every file is checked against the config before any tensor is used: a missing key, a
//! missing tensor or one of the wrong shape is a [`BertError`] naming the file and the
//! key or tensor, never a panic deep inside libtorch.
//!
//! Tokenisation is the caller's: [`BertEncoder::embed`] takes token ids that already
//! include `[CLS]` and `[SEP]`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, TchError, Tensor};

/// Why an encoder could not be loaded or could not embed a batch.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    /// A key is missing, of the wrong type or out of range.
    #[error("{}: `{key}` {problem}", path.display())]
    Config { path: PathBuf, key: String, problem: String },
    #[error("{}: model_type `{model_type}` is not supported (only `bert` is)", path.display())]
    UnsupportedModelType { path: PathBuf, model_type: String },
    #[error("{}: hidden_act `{activation}` is not supported (only `gelu`, the erf form, is)", path.display())]
    UnsupportedActivation { path: PathBuf, activation: String },
    #[error("{}: pooling {modes:?} is not supported (exactly one of mean or cls is)", path.display())]
    UnsupportedPooling { path: PathBuf, modes: Vec<String> },
    /// A sentence-transformers module this encoder does not implement (a `Dense`
    /// projection, say): skipping it would silently give wrong vectors.
    #[error("{}: module `{module}` is not supported (only Transformer, Pooling and Normalize are)", path.display())]
    UnsupportedModule { path: PathBuf, module: String },
    #[error("kind {0:?} is not supported: the encoder computes in a floating-point kind")]
    UnsupportedKind(Kind),
    #[error("no weights in {}: expected model.safetensors or pytorch_model.bin", dir.display())]
    NoWeights { dir: PathBuf },
    /// The weights file exists but could not be read as a set of tensors.
    #[error("{}: {message}", path.display())]
    WeightsFile { path: PathBuf, message: String },
    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?} from config.json", path.display())]
    TensorShape { path: PathBuf, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{}: tensor `{name}` holds {found:?}, expected floating-point values", path.display())]
    TensorKind { path: PathBuf, name: String, found: Kind },
    #[error("input {index} is empty")]
    EmptyInput { index: usize },
    #[error("input {index}: token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { index: usize, id: u32, vocab_size: usize },
    /// libtorch failed while running the model (out of device memory, for instance).
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over the input's real tokens (padding excluded).
    Mean,
    /// The state of the first token, `[CLS]`.
    Cls,
}

/// The hyper-parameters read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_layers: usize,
    num_heads: usize,
    intermediate_size: usize,
    max_positions: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
}

/// A dense layer, `x Wᵀ + b`. `W` is kept transposed (`[in, out]`, contiguous): one
/// `addmm` against it measured faster than `linear` on the stored `[out, in]` layout.
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    /// From the PyTorch layout, `weight` as `[out, in]`.
    fn new(weight: &Tensor, bias: Tensor) -> Result<Self, TchError> {
        Ok(Self { weight_t: weight.f_tr()?.f_contiguous()?, bias })
    }

    /// `x W + b`, multiplied in the weight's kind and returned in `x`'s: a layer moved to
    /// bf16 by [`BertEncoder::with_matmuls_in`] rounds its input to bf16 and widens its
    /// output again, so that everything between the products stays in `x`'s kind.
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let mut shape = x.size();
        let inp = *shape.last().unwrap_or(&0);
        let out = self.weight_t.size()[1];
        let flat = x.f_reshape([-1, inp])?;
        let y = if flat.kind() == self.weight_t.kind() {
            Tensor::f_addmm(&self.bias, &flat, &self.weight_t)?
        } else {
            Tensor::f_addmm(&self.bias, &flat.f_to_kind(self.weight_t.kind())?, &self.weight_t)?.f_to_kind(x.kind())?
        };
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        y.f_view(shape.as_slice())
    }

    /// The same layer with its weight and bias in `kind`.
    fn in_kind(&self, kind: Kind) -> Result<Self, TchError> {
        Ok(Self { weight_t: self.weight_t.f_to_kind(kind)?.f_contiguous()?, bias: self.bias.f_to_kind(kind)? })
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor, TchError> {
        let width = *x.size().last().unwrap_or(&0);
        x.f_layer_norm([width], Some(&self.weight), Some(&self.bias), eps, true)
    }
}

/// One transformer block (post-norm, as in BERT).
struct Layer {
    /// Query, key and value stacked along the output dimension, so that one matmul
    /// projects all three.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    /// `x` is `[batch, seq, hidden]`; `attend` is a `[batch, 1, 1, seq]` boolean mask,
    /// true on real tokens.
    fn forward(&self, x: &Tensor, attend: Option<&Tensor>, heads: i64, eps: f64) -> Result<Tensor, TchError> {
        let (batch, seq, hidden) = x.size3()?;
        let head_dim = hidden / heads;
        // [batch, seq, 3 * hidden] -> [3, batch, heads, seq, head_dim]
        let qkv = self.qkv.forward(x)?.f_view([batch, seq, 3, heads, head_dim])?.f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_select(0, 0)?, qkv.f_select(0, 1)?, qkv.f_select(0, 2)?);
        // The mask keeps padding out of every softmax: without it, padded positions take
        // a share of the attention and the vectors of short inputs drift with the batch.
        // Boolean rather than an additive bias: libtorch turns false into -inf, right in
        // every kind, where a fixed large negative number may not fit in f16.
        let context = Tensor::f_scaled_dot_product_attention(&q, &k, &v, attend, 0.0, false, None, false)?;
        let context = context.f_permute([0, 2, 1, 3])?.f_reshape([batch, seq, hidden])?;
        let x = self.attention_norm.forward(&self.attention_out.forward(&context)?.f_add(x)?, eps)?;
        let inner = self.intermediate.forward(&x)?.f_gelu("none")?;
        self.output_norm.forward(&self.output.forward(&inner)?.f_add(&x)?, eps)
    }
}

/// A BERT sentence encoder: weights as tensors on one device, in one kind.
///
/// Tensors are `Send` but not `Sync`: own the encoder on the thread that runs it.
pub struct BertEncoder {
    config: BertConfig,
    device: Device,
    kind: Kind,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    /// Row 0 of the token-type table: single-sentence inputs are all segment 0.
    token_type_embedding: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    pooling: Pooling,
    normalize: bool,
    max_seq_length: usize,
    parameter_count: usize,
    /// libtorch's thread count when loaded: what a large batch runs on (see [`SMALL_PASS`]).
    threads: i32,
}

/// Padded tokens up to which a forward pass on the CPU runs on one thread. Waking
/// libtorch's (passive) OpenMP threads for each of a small pass's ~100 ops costs more than
/// sharing them saves: one sentence embedded at 95/s on one thread against 84/s on two,
/// while batches of 32 ran at 136/s on one against 185/s on two (`engram bench embed`,
/// 2-core machine).
const SMALL_PASS: usize = 128;

impl fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BertEncoder")
            .field("layers", &self.config.num_layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_seq_length", &self.max_seq_length)
            .field("device", &self.device)
            .field("kind", &self.kind)
            .finish()
    }
}

impl BertEncoder {
    /// Loads the encoder in `dir` onto `device`, converting the weights to `kind`
    /// (a floating-point kind: `Float` on CPU, `Half` or `BFloat16` on a GPU).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<BertEncoder, BertError> {
        if !is_floating(kind) {
            return Err(BertError::UnsupportedKind(kind));
        }
        let _no_grad = tch::no_grad_guard();
        let config = read_config(&dir.join("config.json"))?;
        let (pooling, normalize) = read_pipeline(dir, &config)?;
        let max_seq_length = read_max_seq_length(&dir.join("sentence_bert_config.json"), &config)?;
        let mut weights = Weights::open(dir, device, kind)?;

        let c = &config;
        let (h, i) = (c.hidden_size as i64, c.intermediate_size as i64);
        let word_embeddings = weights.take("embeddings.word_embeddings.weight", &[c.vocab_size as i64, h])?;
        let position_embeddings =
            weights.take("embeddings.position_embeddings.weight", &[c.max_positions as i64, h])?;
        let token_types = weights.take("embeddings.token_type_embeddings.weight", &[c.type_vocab_size as i64, h])?;
        let token_type_embedding = token_types.f_select(0, 0)?;
        let embeddings_norm = weights.layer_norm("embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for n in 0..c.num_layers {
            let p = format!("encoder.layer.{n}");
            let q = weights.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = weights.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = weights.linear(&format!("{p}.attention.self.value"), h, h)?;
            let qkv = Linear {
                weight_t: Tensor::f_cat(&[&q.weight_t, &k.weight_t, &v.weight_t], 1)?.f_contiguous()?,
                bias: Tensor::f_cat(&[&q.bias, &k.bias, &v.bias], 0)?,
            };
            layers.push(Layer {
                qkv,
                attention_out: weights.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: weights.layer_norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: weights.linear(&format!("{p}.intermediate.dense"), i, h)?,
                output: weights.linear(&format!("{p}.output.dense"), h, i)?,
                output_norm: weights.layer_norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        // Whatever is left (the pooler, `position_ids` buffers) plays no part in sentence
        // embeddings and is dropped here.
        Ok(BertEncoder {
            parameter_count: weights.taken_numel,
            config,
            device,
            kind,
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embeddings_norm,
            layers,
            pooling,
            normalize,
            max_seq_length,
            threads: tch::get_num_threads(),
        })
    }

    /// Runs the dense layers' products (about nine tenths of the work for sentences) in
    /// `kind`, keeping the embeddings, layer norms, attention and pooling, and so the
    /// residual stream, in the encoder's kind: autocast's recipe. On a CPU with AMX the
    /// encoder then embeds 1.2-1.9x faster and its vectors stay within a cosine of 0.9999
    /// of the f32 ones (`tests/bert_reference.rs`); elsewhere bf16 was not measured, so
    /// the caller decides (see [`cpu_multiplies_bf16`]). An input's vector then moves
    /// slightly with the batch it is in (oneDNN's kernel depends on the number of rows),
    /// by less than the precision itself costs.
    pub fn with_matmuls_in(mut self, kind: Kind) -> Result<Self, BertError> {
        if !is_floating(kind) {
            return Err(BertError::UnsupportedKind(kind));
        }
        if kind != self.matmul_kind() {
            for layer in &mut self.layers {
                for linear in [&mut layer.qkv, &mut layer.attention_out, &mut layer.intermediate, &mut layer.output] {
                    *linear = linear.in_kind(kind)?;
                }
            }
        }
        Ok(self)
    }

    /// The kind the dense layers multiply in: their weights' kind, the encoder's own
    /// unless [`with_matmuls_in`](Self::with_matmuls_in) changed it.
    pub fn matmul_kind(&self) -> Kind {
        self.layers.first().map_or(self.kind, |layer| layer.qkv.weight_t.kind())
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Length of the vectors [`embed`](Self::embed) returns (the hidden size).
    pub fn dimension(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest input, in tokens, that is embedded whole; longer ones are cut.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Number of parameters loaded: embeddings and encoder layers. The pooler, which
    /// sentence embeddings do not use, is not loaded and not counted.
    pub fn parameter_count(&self) -> usize {
        self.parameter_count
    }

    /// How token states are pooled into one vector.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether vectors are scaled to unit length.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Embeds a batch of already-tokenised inputs (ids include [CLS]/[SEP]); each is cut to
    /// max_seq_length (the caller reports truncation); pads to the longest in the batch
    /// with an attention mask; returns one (unit length when configured) vector per input.
    ///
    /// A cut input keeps its last token, so that a closing `[SEP]` survives as it does with
    /// the tokenizer's own truncation in sentence-transformers.
    pub fn embed(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, BertError> {
        self.embed_padded(batch, 0)
    }

    /// [`BertEncoder::embed`] with every input padded to at least `width` tokens (never
    /// past the length limit): on a GPU, forward passes of a few repeated shapes run
    /// faster than many of distinct shapes (see `Embedder`'s chunking).
    pub fn embed_padded(&self, batch: &[Vec<u32>], width: usize) -> Result<Vec<Vec<f32>>, BertError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for (index, ids) in batch.iter().enumerate() {
            if ids.is_empty() {
                return Err(BertError::EmptyInput { index });
            }
            // An out-of-range id would be a device-side assertion on CUDA, fatal to the
            // process: catch it here.
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                return Err(BertError::TokenOutOfRange { index, id, vocab_size: self.config.vocab_size });
            }
        }
        // Where a fault in libtorch would strike (tests inject panics here).
        fail::fail_point!("embedder::forward");
        let _no_grad = tch::no_grad_guard();
        let longest = batch.iter().map(|ids| ids.len().min(self.max_seq_length)).max().unwrap_or(0);
        let width = longest.max(width.min(self.max_seq_length));
        if self.device == Device::Cpu {
            // Per thread (OpenMP's setting), and the encoder runs on one thread.
            let wanted = if batch.len() * width <= SMALL_PASS { 1 } else { self.threads };
            if tch::get_num_threads() != wanted {
                tch::set_num_threads(wanted);
            }
        }
        let mut ids = vec![0i64; batch.len() * width];
        let mut real = vec![false; batch.len() * width];
        for (row, input) in batch.iter().enumerate() {
            let kept = cut(input, self.max_seq_length);
            for (col, id) in kept.enumerate() {
                ids[row * width + col] = i64::from(id);
                real[row * width + col] = true;
            }
        }
        let shape = [batch.len() as i64, width as i64];
        let ids = Tensor::from_slice(&ids).f_view(shape)?.f_to_device(self.device)?;
        let real = Tensor::from_slice(&real).f_view(shape)?.f_to_device(self.device)?;

        // Without padding there is nothing to mask, and unmasked attention takes
        // libtorch's faster fused kernel.
        let padded = batch.iter().any(|ids| ids.len().min(self.max_seq_length) < width);
        let states = self.encode(&ids, padded.then_some(&real))?;
        let pooled = match self.pooling {
            Pooling::Cls => states.f_select(1, 0)?,
            Pooling::Mean => {
                let weights = real.f_unsqueeze(-1)?.f_to_kind(self.kind)?;
                let sums = states.f_mul(&weights)?.f_sum_dim_intlist(&[1i64][..], false, self.kind)?;
                // Every input has at least one token, so the count is never 0.
                sums.f_div(&weights.f_sum_dim_intlist(&[1i64][..], false, self.kind)?)?
            }
        };
        // The last steps run in f32 whatever the model's kind: they are cheap, and the
        // caller gets f32 vectors anyway.
        let mut pooled = pooled.f_to_kind(Kind::Float)?;
        if self.normalize {
            let norms = pooled.f_norm_scalaropt_dim(2, [-1i64], true)?.f_clamp_min(1e-12)?;
            pooled = pooled.f_div(&norms)?;
        }
        Ok(Vec::<Vec<f32>>::try_from(&pooled.f_to_device(Device::Cpu)?)?)
    }

    /// Token ids `[batch, seq]` and mask `[batch, seq]` (true on real tokens) to the last
    /// layer's states, `[batch, seq, hidden]`.
    fn encode(&self, ids: &Tensor, real: Option<&Tensor>) -> Result<Tensor, TchError> {
        let (batch, seq) = ids.size2()?;
        let eps = self.config.layer_norm_eps;
        let words = Tensor::f_embedding(&self.word_embeddings, ids, -1, false, false)?;
        let positions = self.position_embeddings.f_narrow(0, 0, seq)?;
        let summed = words.f_add(&positions)?.f_add(&self.token_type_embedding)?;
        let mut x = self.embeddings_norm.forward(&summed, eps)?;
        let attend = real.map(|r| r.f_view([batch, 1, 1, seq])).transpose()?;
        for layer in &self.layers {
            x = layer.forward(&x, attend.as_ref(), self.config.num_heads as i64, eps)?;
        }
        Ok(x)
    }
}

/// Whether this CPU multiplies bf16 matrices natively, with AMX tiles the operating
/// system has enabled: there libtorch's oneDNN runs the encoder's products in bf16, and
/// the whole encoder embeds 1.2-1.9x faster (`engram bench embed` on a 2-core Sapphire
/// Rapids guest). Without AMX, bf16 is emulated or runs on AVX-512 BF16 dot products
/// alone, which was not measured, so there the encoder stays in f32 unless told
/// otherwise.
pub fn cpu_multiplies_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // By hand because std's detection of AMX is not stable yet.
        #[allow(unused_unsafe)]
        let (max_leaf, osxsave) = unsafe { (__cpuid(0).eax, __cpuid(1).ecx & (1 << 27) != 0) };
        if max_leaf < 7 || !osxsave {
            return false;
        }
        // Leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        #[allow(unused_unsafe)]
        let leaf = unsafe { __cpuid_count(7, 0) };
        let cpu_has_amx = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
        // XCR0 bits 17 and 18: the system saves the tile state, that is, lets processes
        // use the tiles (a kernel older than 5.16, or a hypervisor, may not).
        cpu_has_amx && xcr0() & (0b11 << 17) == 0b11 << 17
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The XCR0 register: which register states the operating system manages.
#[cfg(target_arch = "x86_64")]
fn xcr0() -> u64 {
    #[target_feature(enable = "xsave")]
    unsafe fn read() -> u64 {
        std::arch::x86_64::_xgetbv(0)
    }
    // SAFETY: called only once CPUID has reported OSXSAVE, which makes XGETBV available.
    unsafe { read() }
}

/// The kinds the encoder computes in (and the kinds weights may be stored in).
fn is_floating(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// The ids of `input` cut to `max` tokens, keeping the last one.
fn cut(input: &[u32], max: usize) -> impl Iterator<Item = u32> + '_ {
    let (head, tail) =
        if input.len() <= max { (input, &[][..]) } else { (&input[..max - 1], &input[input.len() - 1..]) };
    head.iter().chain(tail).copied()
}

/// The tensors of a weights file, handed out one by one after a shape check.
struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// `bert.` when the checkpoint was saved from a model with heads (`BertForMaskedLM`
    /// and the like), empty when saved from a bare `BertModel` (as MiniLM's is).
    prefix: &'static str,
    device: Device,
    kind: Kind,
    taken_numel: usize,
}

impl Weights {
    fn open(dir: &Path, device: Device, kind: Kind) -> Result<Weights, BertError> {
        let safetensors = dir.join("model.safetensors");
        let pickle = dir.join("pytorch_model.bin");
        let (path, loaded) = if safetensors.is_file() {
            let loaded = Tensor::read_safetensors(&safetensors)
                .map_err(|e| BertError::WeightsFile { path: safetensors.clone(), message: e.to_string() });
            (safetensors, loaded)
        } else if pickle.is_file() {
            // What libtorch (through tch) can read here is narrow: a zip-format `torch.save`
            // (PyTorch 1.6 and later) of a plain dict. Hugging Face saves an OrderedDict,
            // which libtorch's reader rejects with an internal assertion, and older files
            // are raw pickles it does not read at all. Most `pytorch_model.bin` files thus
            // fail to load, and the message says what to do instead.
            let loaded = Tensor::loadz_multi(&pickle).map_err(|e| BertError::WeightsFile {
                path: pickle.clone(),
                message: format!(
                    "libtorch cannot read this file: it reads only zip-format torch.save files holding a \
                     plain dict, not the OrderedDict Hugging Face saves nor pre-1.6 pickles; convert the \
                     weights to model.safetensors (libtorch said: {})",
                    first_line(&e.to_string())
                ),
            });
            (pickle, loaded)
        } else {
            return Err(BertError::NoWeights { dir: dir.to_path_buf() });
        };
        let tensors: HashMap<String, Tensor> = loaded?.into_iter().collect();
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        Ok(Weights { path, tensors, prefix, device, kind, taken_numel: 0 })
    }

    /// Removes the tensor `name` (prefixed as the file needs), checks its shape and kind,
    /// and returns it converted and on the device.
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, BertError> {
        self.take_any(&[name], shape)
    }

    /// As [`take`](Self::take), with alternative names tried in order.
    fn take_any(&mut self, names: &[&str], shape: &[i64]) -> Result<Tensor, BertError> {
        let full: Vec<String> = names.iter().map(|n| format!("{}{n}", self.prefix)).collect();
        let Some((name, tensor)) = full.iter().find_map(|n| self.tensors.remove(n).map(|t| (n, t))) else {
            return Err(BertError::MissingTensor { path: self.path.clone(), name: full[0].clone() });
        };
        let found = tensor.size();
        if found != shape {
            return Err(BertError::TensorShape {
                path: self.path.clone(),
                name: name.clone(),
                expected: shape.to_vec(),
                found,
            });
        }
        if !is_floating(tensor.kind()) {
            return Err(BertError::TensorKind { path: self.path.clone(), name: name.clone(), found: tensor.kind() });
        }
        self.taken_numel += tensor.numel();
        // Convert before moving: a half-precision copy is half the bytes to transfer.
        Ok(tensor.f_to_kind(self.kind)?.f_to_device(self.device)?)
    }

    fn linear(&mut self, name: &str, out: i64, inp: i64) -> Result<Linear, BertError> {
        let weight = self.take(&format!("{name}.weight"), &[out, inp])?;
        Ok(Linear::new(&weight, self.take(&format!("{name}.bias"), &[out])?)?)
    }

    /// Layer norms under both the current names and the `gamma`/`beta` of checkpoints
    /// written by the original TensorFlow port.
    fn layer_norm(&mut self, name: &str, width: i64) -> Result<LayerNorm, BertError> {
        Ok(LayerNorm {
            weight: self.take_any(&[&format!("{name}.weight"), &format!("{name}.gamma")], &[width])?,
            bias: self.take_any(&[&format!("{name}.bias"), &format!("{name}.beta")], &[width])?,
        })
    }
}

/// The first line of a libtorch message, without the C++ backtrace that may follow.
fn first_line(message: &str) -> &str {
    let line = message.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(200) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

fn read_json(path: &Path) -> Result<Value, BertError> {
    let text = std::fs::read_to_string(path).map_err(|source| BertError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| BertError::Json { path: path.to_path_buf(), source })
}

fn config_error(path: &Path, key: &str, problem: impl Into<String>) -> BertError {
    BertError::Config { path: path.to_path_buf(), key: key.to_string(), problem: problem.into() }
}

/// A non-negative integer under `key`; `default` when the key is absent (or null), an
/// error naming the key when there is no default.
fn integer(json: &Value, path: &Path, key: &str, default: Option<usize>) -> Result<usize, BertError> {
    match json.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| config_error(path, key, "is missing")),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| config_error(path, key, format!("must be a non-negative integer, found {v}"))),
    }
}

fn positive(json: &Value, path: &Path, key: &str, default: Option<usize>) -> Result<usize, BertError> {
    match integer(json, path, key, default)? {
        0 => Err(config_error(path, key, "must be positive, found 0")),
        n => Ok(n),
    }
}

fn string<'a>(json: &'a Value, path: &Path, key: &str) -> Result<Option<&'a str>, BertError> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(config_error(path, key, format!("must be a string, found {v}"))),
    }
}

fn boolean(json: &Value, path: &Path, key: &str) -> Result<bool, BertError> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(config_error(path, key, format!("must be true or false, found {v}"))),
    }
}

/// Reads `config.json`. Sizes have no defaults (a guess would only fail later, at the
/// shape checks, with a less useful message); the rest take Hugging Face's defaults.
fn read_config(path: &Path) -> Result<BertConfig, BertError> {
    let json = read_json(path)?;
    if !json.is_object() {
        return Err(config_error(path, "(top level)", "must be a JSON object"));
    }
    // Configs from before transformers 3 have no model_type; the weight names then
    // decide whether this is a BERT.
    if let Some(model_type) = string(&json, path, "model_type")? {
        if model_type != "bert" {
            return Err(BertError::UnsupportedModelType { path: path.to_path_buf(), model_type: model_type.into() });
        }
    }
    let activation = string(&json, path, "hidden_act")?.unwrap_or("gelu");
    if activation != "gelu" {
        return Err(BertError::UnsupportedActivation { path: path.to_path_buf(), activation: activation.into() });
    }
    if let Some(kind) = string(&json, path, "position_embedding_type")? {
        if kind != "absolute" {
            return Err(config_error(
                path,
                "position_embedding_type",
                format!("`{kind}` is not supported (only absolute is)"),
            ));
        }
    }
    let layer_norm_eps = match json.get("layer_norm_eps") {
        None | Some(Value::Null) => 1e-12,
        Some(v) => v
            .as_f64()
            .filter(|e| *e > 0.0)
            .ok_or_else(|| config_error(path, "layer_norm_eps", format!("must be a positive number, found {v}")))?,
    };
    let config = BertConfig {
        vocab_size: positive(&json, path, "vocab_size", None)?,
        hidden_size: positive(&json, path, "hidden_size", None)?,
        num_layers: integer(&json, path, "num_hidden_layers", None)?,
        num_heads: positive(&json, path, "num_attention_heads", None)?,
        intermediate_size: positive(&json, path, "intermediate_size", None)?,
        max_positions: positive(&json, path, "max_position_embeddings", Some(512))?,
        type_vocab_size: positive(&json, path, "type_vocab_size", Some(2))?,
        layer_norm_eps,
    };
    if config.hidden_size % config.num_heads != 0 {
        return Err(config_error(
            path,
            "num_attention_heads",
            format!("({}) must divide hidden_size ({})", config.num_heads, config.hidden_size),
        ));
    }
    Ok(config)
}

/// Reads the sentence-transformers pipeline: the pooling, and whether a `Normalize`
/// module follows it. With no `modules.json` the folder is a bare Hugging Face model:
/// `1_Pooling/config.json` is used if present, mean pooling otherwise, and no
/// normalisation (what sentence-transformers itself does with such a folder).
fn read_pipeline(dir: &Path, config: &BertConfig) -> Result<(Pooling, bool), BertError> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = if pooling_path.is_file() { read_pooling(&pooling_path, config)? } else { Pooling::Mean };
        return Ok((pooling, false));
    }
    let modules = read_json(&modules_path)?;
    let Some(modules) = modules.as_array() else {
        return Err(config_error(&modules_path, "(top level)", "must be a list of modules"));
    };
    let mut pooling = None;
    let mut normalize = false;
    for module in modules {
        let kind = string(module, &modules_path, "type")?
            .ok_or_else(|| config_error(&modules_path, "type", "is missing from a module"))?;
        match kind.rsplit('.').next().unwrap_or(kind) {
            "Transformer" => {}
            "Pooling" => {
                let sub = string(module, &modules_path, "path")?.unwrap_or("");
                pooling = Some(read_pooling(&dir.join(sub).join("config.json"), config)?);
            }
            "Normalize" => normalize = true,
            _ => return Err(BertError::UnsupportedModule { path: modules_path, module: kind.into() }),
        }
    }
    let pooling = pooling.ok_or_else(|| config_error(&modules_path, "modules", "has no Pooling module"))?;
    Ok((pooling, normalize))
}

/// Reads a sentence-transformers pooling config: one mode must be on, mean or cls.
fn read_pooling(path: &Path, config: &BertConfig) -> Result<Pooling, BertError> {
    let json = read_json(path)?;
    let dimension = integer(&json, path, "word_embedding_dimension", Some(config.hidden_size))?;
    if dimension != config.hidden_size {
        return Err(config_error(
            path,
            "word_embedding_dimension",
            format!("is {dimension}, but config.json's hidden_size is {}", config.hidden_size),
        ));
    }
    let mut modes = Vec::new();
    if let Some(object) = json.as_object() {
        for key in object.keys().filter(|k| k.starts_with("pooling_mode_")) {
            if boolean(&json, path, key)? {
                modes.push(key.trim_start_matches("pooling_mode_").to_string());
            }
        }
    }
    match modes.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["mean_tokens"] => Ok(Pooling::Mean),
        ["cls_token"] => Ok(Pooling::Cls),
        _ => Err(BertError::UnsupportedPooling { path: path.to_path_buf(), modes }),
    }
}

/// `max_seq_length` from `sentence_bert_config.json`, defaulting to (and capped at) the
/// number of positions the model has embeddings for.
fn read_max_seq_length(path: &Path, config: &BertConfig) -> Result<usize, BertError> {
    if !path.is_file() {
        return Ok(config.max_positions);
    }
    let json = read_json(path)?;
    let length = integer(&json, path, "max_seq_length", Some(config.max_positions))?;
    // Two tokens is the least that holds [CLS] and [SEP].
    if length < 2 {
        return Err(config_error(path, "max_seq_length", format!("must be at least 2, found {length}")));
    }
    if length > config.max_positions {
        tracing::warn!(
            path = %path.display(),
            max_seq_length = length,
            max_position_embeddings = config.max_positions,
            "max_seq_length exceeds the model's positions; inputs will be cut to the latter"
        );
    }
    Ok(length.min(config.max_positions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    /// A tiny BERT: vocabulary 6, hidden 4 in 2 heads, positions 6.
    fn tiny_config(layers: usize) -> Value {
        json!({
            "model_type": "bert", "hidden_act": "gelu", "vocab_size": 6, "hidden_size": 4,
            "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": 8,
            "max_position_embeddings": 6, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
            "position_embedding_type": "absolute"
        })
    }

    fn size(config: &Value, key: &str) -> i64 {
        config[key].as_i64().unwrap()
    }

    /// Every tensor `config` calls for, named as in MiniLM, with seeded random values.
    fn random_weights(config: &Value, seed: u64) -> Vec<(String, Tensor)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut random = |shape: &[i64]| {
            let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.gen_range(-0.5..0.5)).collect();
            Tensor::from_slice(&values).view(shape)
        };
        let (v, h, i) = (size(config, "vocab_size"), size(config, "hidden_size"), size(config, "intermediate_size"));
        let (p, t) = (size(config, "max_position_embeddings"), size(config, "type_vocab_size"));
        let mut shapes = vec![
            ("embeddings.word_embeddings.weight".to_string(), vec![v, h]),
            ("embeddings.position_embeddings.weight".to_string(), vec![p, h]),
            ("embeddings.token_type_embeddings.weight".to_string(), vec![t, h]),
            ("embeddings.LayerNorm.weight".to_string(), vec![h]),
            ("embeddings.LayerNorm.bias".to_string(), vec![h]),
        ];
        for n in 0..size(config, "num_hidden_layers") {
            let dense = [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ];
            for (name, out, inp) in dense {
                shapes.push((format!("encoder.layer.{n}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("encoder.layer.{n}.{name}.bias"), vec![out]));
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("encoder.layer.{n}.{norm}.weight"), vec![h]));
                shapes.push((format!("encoder.layer.{n}.{norm}.bias"), vec![h]));
            }
        }
        shapes.into_iter().map(|(name, shape)| (name, random(&shape))).collect()
    }

    fn write_json(path: &Path, value: &Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    }

    /// A model folder: config, weights, and a sentence-transformers pipeline when
    /// `pooling` is given (`cls_token` or `mean_tokens`, followed by `Normalize`).
    fn model_dir(config: &Value, weights: &[(String, Tensor)], pooling: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_json(&dir.path().join("config.json"), config);
        Tensor::write_safetensors(weights, dir.path().join("model.safetensors")).unwrap();
        if let Some(mode) = pooling {
            write_json(
                &dir.path().join("modules.json"),
                &json!([
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
                ]),
            );
            let mut pooling = json!({
                "word_embedding_dimension": config["hidden_size"],
                "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": false,
                "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false
            });
            pooling[format!("pooling_mode_{mode}")] = json!(true);
            write_json(&dir.path().join("1_Pooling/config.json"), &pooling);
        }
        dir
    }

    fn load(dir: &Path) -> Result<BertEncoder, BertError> {
        BertEncoder::load(dir, Device::Cpu, Kind::Float)
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn row(weights: &[(String, Tensor)], name: &str, index: i64) -> Vec<f32> {
        let tensor = &weights.iter().find(|(n, _)| n == name).unwrap().1;
        let tensor = if tensor.dim() == 2 { tensor.get(index) } else { tensor.shallow_clone() };
        Vec::<f32>::try_from(&tensor).unwrap()
    }

    /// With no layers the model is its embedding block: the layer norm of the sum of the
    /// word, position and segment-0 rows, computed here by hand.
    #[test]
    fn an_embeddings_only_model_matches_a_hand_computation() {
        let config = tiny_config(0);
        let weights = random_weights(&config, 1);
        let ids = [1u32, 4, 2];
        let states: Vec<Vec<f32>> = ids
            .iter()
            .enumerate()
            .map(|(position, &id)| {
                let word = row(&weights, "embeddings.word_embeddings.weight", i64::from(id));
                let place = row(&weights, "embeddings.position_embeddings.weight", position as i64);
                let segment = row(&weights, "embeddings.token_type_embeddings.weight", 0);
                let sum: Vec<f32> = (0..4).map(|d| word[d] + place[d] + segment[d]).collect();
                let mean = sum.iter().sum::<f32>() / 4.0;
                let variance = sum.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 4.0;
                let gain = row(&weights, "embeddings.LayerNorm.weight", 0);
                let shift = row(&weights, "embeddings.LayerNorm.bias", 0);
                (0..4).map(|d| (sum[d] - mean) / (variance + 1e-12).sqrt() * gain[d] + shift[d]).collect()
            })
            .collect();

        // No modules.json: mean pooling, no normalisation.
        let plain = model_dir(&config, &weights, None);
        let encoder = load(plain.path()).unwrap();
        assert_eq!((encoder.pooling(), encoder.normalizes(), encoder.max_seq_length()), (Pooling::Mean, false, 6));
        let mean: Vec<f32> = (0..4).map(|d| states.iter().map(|s| s[d]).sum::<f32>() / 3.0).collect();
        assert!(max_abs_diff(&encoder.embed(&[ids.to_vec()]).unwrap()[0], &mean) < 1e-5);

        // CLS pooling, normalised.
        let cls = model_dir(&config, &weights, Some("cls_token"));
        let encoder = load(cls.path()).unwrap();
        assert_eq!((encoder.pooling(), encoder.normalizes()), (Pooling::Cls, true));
        let norm = states[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        let first: Vec<f32> = states[0].iter().map(|x| x / norm).collect();
        assert!(max_abs_diff(&encoder.embed(&[ids.to_vec()]).unwrap()[0], &first) < 1e-5);
    }

    #[test]
    fn a_cut_input_keeps_its_last_token() {
        let config = tiny_config(1);
        let dir = model_dir(&config, &random_weights(&config, 2), Some("mean_tokens"));
        write_json(&dir.path().join("sentence_bert_config.json"), &json!({"max_seq_length": 3}));
        let encoder = load(dir.path()).unwrap();
        assert_eq!(encoder.max_seq_length(), 3);
        let got = encoder.embed(&[vec![1, 2, 3, 4, 5], vec![1, 2, 5], vec![1, 2, 3]]).unwrap();
        assert!(max_abs_diff(&got[0], &got[1]) < 1e-6);
        assert!(max_abs_diff(&got[0], &got[2]) > 1e-3);
    }

    #[test]
    fn max_seq_length_is_capped_at_the_positions() {
        let config = tiny_config(1);
        let dir = model_dir(&config, &random_weights(&config, 3), None);
        write_json(&dir.path().join("sentence_bert_config.json"), &json!({"max_seq_length": 100}));
        assert_eq!(load(dir.path()).unwrap().max_seq_length(), 6);
        // A long input must then fit the 6 position embeddings rather than fail.
        assert_eq!(load(dir.path()).unwrap().embed(&[vec![1; 50]]).unwrap()[0].len(), 4);
    }

    /// Checkpoints converted from the original TensorFlow BERT name layer norms
    /// `gamma`/`beta`.
    #[test]
    fn gamma_and_beta_layer_norm_names_load_the_same_model() {
        let config = tiny_config(2);
        let weights = random_weights(&config, 4);
        let renamed: Vec<(String, Tensor)> = weights
            .iter()
            .map(|(name, t)| {
                let name =
                    name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
                (name, t.shallow_clone())
            })
            .collect();
        assert!(renamed.iter().any(|(n, _)| n.ends_with("gamma")));
        let batch = [vec![0, 1, 2, 3], vec![5, 4]];
        let a = load(model_dir(&config, &weights, None).path()).unwrap().embed(&batch).unwrap();
        let b = load(model_dir(&config, &renamed, None).path()).unwrap().embed(&batch).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn half_precision_agrees_with_f32() {
        let mut config = tiny_config(2);
        config["hidden_size"] = json!(64);
        config["num_attention_heads"] = json!(4);
        config["intermediate_size"] = json!(128);
        config["vocab_size"] = json!(50);
        let dir = model_dir(&config, &random_weights(&config, 5), Some("mean_tokens"));
        let batch = [vec![1, 7, 30, 2], vec![1, 49, 2], vec![1, 3, 5, 8, 13, 21]];
        let full = BertEncoder::load(dir.path(), Device::Cpu, Kind::Float).unwrap().embed(&batch).unwrap();
        let half = BertEncoder::load(dir.path(), Device::Cpu, Kind::Half).unwrap().embed(&batch).unwrap();
        for (f, h) in full.iter().zip(&half) {
            assert!(max_abs_diff(f, h) < 1e-2, "{}", max_abs_diff(f, h));
        }
    }

    /// Loads `config`, after `edit`, with valid weights for the unedited config.
    fn load_edited(edit: impl FnOnce(&mut Value)) -> BertError {
        let config = tiny_config(1);
        let weights = random_weights(&config, 6);
        let mut edited = config.clone();
        edit(&mut edited);
        let dir = model_dir(&edited, &weights, None);
        load(dir.path()).unwrap_err()
    }

    fn assert_config_error(err: BertError, expected_key: &str) {
        match &err {
            BertError::Config { key, path, .. } => {
                assert_eq!(key, expected_key);
                assert!(path.ends_with("config.json"), "{}", path.display());
            }
            other => panic!("expected a Config error on `{expected_key}`, got {other:?}"),
        }
        assert!(err.to_string().contains(expected_key), "{err}");
    }

    #[test]
    fn config_errors_name_the_key() {
        match load_edited(|c| c["model_type"] = json!("roberta")) {
            BertError::UnsupportedModelType { model_type, .. } => assert_eq!(model_type, "roberta"),
            other => panic!("{other:?}"),
        }
        match load_edited(|c| c["hidden_act"] = json!("gelu_new")) {
            BertError::UnsupportedActivation { activation, .. } => assert_eq!(activation, "gelu_new"),
            other => panic!("{other:?}"),
        }
        assert_config_error(load_edited(|c| drop(c.as_object_mut().unwrap().remove("hidden_size"))), "hidden_size");
        assert_config_error(load_edited(|c| c["vocab_size"] = json!("six")), "vocab_size");
        assert_config_error(load_edited(|c| c["num_attention_heads"] = json!(3)), "num_attention_heads");
        assert_config_error(load_edited(|c| c["intermediate_size"] = json!(0)), "intermediate_size");
        assert_config_error(load_edited(|c| c["layer_norm_eps"] = json!(-1.0)), "layer_norm_eps");
        assert_config_error(
            load_edited(|c| c["position_embedding_type"] = json!("relative_key")),
            "position_embedding_type",
        );
        // A size that disagrees with the weights is caught at the shape check.
        match load_edited(|c| c["intermediate_size"] = json!(16)) {
            BertError::TensorShape { name, expected, found, .. } => {
                assert_eq!(name, "encoder.layer.0.intermediate.dense.weight");
                assert_eq!((expected, found), (vec![16, 4], vec![8, 4]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreadable_files_are_errors_naming_them() {
        let config = tiny_config(0);
        let dir = model_dir(&config, &random_weights(&config, 7), None);
        std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
        match load(dir.path()) {
            Err(BertError::Json { path, .. }) => assert!(path.ends_with("config.json")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        match load(dir.path()) {
            Err(BertError::Io { path, .. }) => assert!(path.ends_with("config.json")),
            other => panic!("{other:?}"),
        }

        let dir = model_dir(&config, &random_weights(&config, 7), None);
        std::fs::write(dir.path().join("model.safetensors"), b"not a safetensors file").unwrap();
        match load(dir.path()) {
            Err(BertError::WeightsFile { path, .. }) => assert!(path.ends_with("model.safetensors")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"not a torch file").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(&err, BertError::WeightsFile { path, .. } if path.ends_with("pytorch_model.bin")), "{err:?}");
        assert!(err.to_string().contains("convert the weights to model.safetensors"), "{err}");
    }

    #[test]
    fn integer_weights_and_integer_kinds_are_refused() {
        let config = tiny_config(0);
        let mut weights = random_weights(&config, 8);
        weights[1].1 = weights[1].1.to_kind(Kind::Int64);
        let dir = model_dir(&config, &weights, None);
        match load(dir.path()) {
            Err(BertError::TensorKind { name, found: Kind::Int64, .. }) => {
                assert_eq!(name, "embeddings.position_embeddings.weight")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            BertEncoder::load(dir.path(), Device::Cpu, Kind::Int64),
            Err(BertError::UnsupportedKind(Kind::Int64))
        ));
    }

    #[test]
    fn pipeline_errors_name_the_file() {
        let config = tiny_config(0);
        let weights = random_weights(&config, 9);

        let dir = model_dir(&config, &weights, Some("max_tokens"));
        match load(dir.path()) {
            Err(BertError::UnsupportedPooling { path, modes }) => {
                assert!(path.ends_with("1_Pooling/config.json"));
                assert_eq!(modes, ["max_tokens"]);
            }
            other => panic!("{other:?}"),
        }

        let dir = model_dir(&config, &weights, Some("mean_tokens"));
        let pooling_path = dir.path().join("1_Pooling/config.json");
        let mut pooling: Value = serde_json::from_str(&std::fs::read_to_string(&pooling_path).unwrap()).unwrap();
        pooling["pooling_mode_cls_token"] = json!(true);
        write_json(&pooling_path, &pooling);
        assert!(matches!(load(dir.path()), Err(BertError::UnsupportedPooling { modes, .. }) if modes.len() == 2));
        pooling["pooling_mode_cls_token"] = json!(false);
        pooling["word_embedding_dimension"] = json!(8);
        write_json(&pooling_path, &pooling);
        assert!(matches!(load(dir.path()), Err(BertError::Config { key, .. }) if key == "word_embedding_dimension"));

        let dir = model_dir(&config, &weights, Some("mean_tokens"));
        let modules = json!([
            {"path": "", "type": "sentence_transformers.models.Transformer"},
            {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}
        ]);
        write_json(&dir.path().join("modules.json"), &modules);
        match load(dir.path()) {
            Err(BertError::UnsupportedModule { module, .. }) => {
                assert_eq!(module, "sentence_transformers.models.Dense")
            }
            other => panic!("{other:?}"),
        }
    }

    /// CUDA against the CPU at a realistic size; run with `--ignored` where a GPU is.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn cuda_agrees_with_the_cpu() {
        assert!(tch::Cuda::is_available(), "no CUDA device visible to libtorch");
        let mut config = tiny_config(6);
        for (key, value) in [("vocab_size", 1000), ("hidden_size", 384), ("num_attention_heads", 12)] {
            config[key] = json!(value);
        }
        config["intermediate_size"] = json!(1536);
        config["max_position_embeddings"] = json!(512);
        let dir = model_dir(&config, &random_weights(&config, 10), Some("mean_tokens"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let batch: Vec<Vec<u32>> =
            [3, 40, 256, 7, 120].iter().map(|&n| (0..n).map(|_| rng.gen_range(0..1000)).collect()).collect();
        let cpu = load(dir.path()).unwrap().embed(&batch).unwrap();
        for (kind, tolerance) in [(Kind::Float, 1e-4), (Kind::Half, 2e-2), (Kind::BFloat16, 5e-2)] {
            let gpu = BertEncoder::load(dir.path(), Device::Cuda(0), kind).unwrap().embed(&batch).unwrap();
            for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
                let diff = max_abs_diff(c, g);
                assert!(diff < tolerance, "{kind:?}, input {i}: differs by {diff}");
            }
        }
    }
}
