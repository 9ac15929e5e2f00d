//! The BERT encoder on the real all-MiniLM-L6-v2 files, checked against values
//! sentence-transformers computes on the same files (`shared/notes/models.md`), and
//! against broken copies of those files.

use std::path::{Path, PathBuf};

use engram::model::bert::{BertEncoder, BertError, Pooling};
use tch::{Device, Kind, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

const MODEL: &str = "models/all-MiniLM-L6-v2";

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL)
}

/// The shipped tokenizer pads and truncates at 128 on its own; both are turned off so
/// that the encoder sees each input's real tokens only.
fn tokenizer() -> Tokenizer {
    let mut tokenizer = Tokenizer::from_file(model_dir().join("tokenizer.json")).expect("tokenizer.json");
    tokenizer.with_padding(None).with_truncation(None).expect("turning truncation off");
    tokenizer
}

fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, true).expect("encoding").get_ids().to_vec()
}

fn encoder() -> BertEncoder {
    BertEncoder::load(&model_dir(), Device::Cpu, Kind::Float).expect("loading all-MiniLM-L6-v2")
}

fn embed_texts(encoder: &BertEncoder, texts: &[&str]) -> Vec<Vec<f32>> {
    let tokenizer = tokenizer();
    let batch: Vec<Vec<u32>> = texts.iter().map(|t| ids(&tokenizer, t)).collect();
    encoder.embed(&batch).expect("embedding")
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The real weights as named tensors, to be altered and written into a scratch folder.
fn real_tensors() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(model_dir().join("model.safetensors")).expect("reading model.safetensors")
}

/// A scratch model folder with the real config and the given tensors.
fn scratch_model(tensors: &[(String, Tensor)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(model_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    Tensor::write_safetensors(tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn tokenizer_gives_the_reference_ids() {
    assert_eq!(ids(&tokenizer(), "A man is eating food."), [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]);
}

#[test]
fn reads_the_sentence_transformers_settings_and_sizes() {
    let encoder = encoder();
    assert_eq!(encoder.dimension(), 384);
    assert_eq!(encoder.max_seq_length(), 256);
    assert_eq!(encoder.pooling(), Pooling::Mean);
    assert!(encoder.normalizes());
    // From config.json by hand, pooler excluded: embeddings 30522*384 + 512*384 + 2*384
    // + 2*384, and per layer 4*(384*384+384) + (1536*384+1536) + (384*1536+384) + 4*384.
    let embeddings = 30522 * 384 + 512 * 384 + 2 * 384 + 2 * 384;
    let layer = 4 * (384 * 384 + 384) + (1536 * 384 + 1536) + (384 * 1536 + 384) + 4 * 384;
    assert_eq!(encoder.parameter_count(), embeddings + 6 * layer);
}

#[test]
fn embedding_matches_sentence_transformers() {
    let v = &embed_texts(&encoder(), &["A man is eating food."])[0];
    assert_eq!(v.len(), 384);
    assert!((dot(v, v).sqrt() - 1.0).abs() < 1e-5, "norm {}", dot(v, v).sqrt());
    let reference = [0.033242, 0.004406, -0.006277, 0.048379, -0.138702];
    for (i, (got, want)) in v.iter().zip(reference).enumerate() {
        assert!((got - want).abs() < 1e-4, "component {i}: {got} vs {want}");
    }
}

/// Embeds the two reference pairs, checks their similarities against
/// sentence-transformers' and returns the vectors.
fn assert_reference_similarities(encoder: &BertEncoder) -> Vec<Vec<f32>> {
    let v = embed_texts(
        encoder,
        &[
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The new movie is awesome",
            "The new movie is so great",
        ],
    );
    let food = cosine(&v[0], &v[1]);
    let movie = cosine(&v[2], &v[3]);
    assert!((food - 0.75534).abs() < 1e-3, "food pair: {food}");
    assert!((movie - 0.89390).abs() < 1e-3, "movie pair: {movie}");
    v
}

#[test]
fn similarities_match_sentence_transformers() {
    assert_reference_similarities(&encoder());
}

fn bf16_products() -> BertEncoder {
    encoder().with_matmuls_in(Kind::BFloat16).expect("bf16 products")
}

/// Texts of many lengths and topics, for comparing batches and precisions.
const VARIED: [&str; 6] = [
    "Hi",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Memory",
    "Long-term memory services store what a language model has seen and bring it back \
     when a later conversation needs it, ranking candidates by the similarity of their \
     embeddings to the question, then trimming them to fit the context window.",
    "Is it raining?",
];

/// Padding must change nothing: a mask that leaks shows here first.
#[test]
fn a_padded_batch_gives_the_same_vectors_as_one_at_a_time() {
    let encoder = encoder();
    let tokenizer = tokenizer();
    let batch: Vec<Vec<u32>> = VARIED.iter().map(|t| ids(&tokenizer, t)).collect();
    assert!(batch[4].len() > 10 * batch[0].len(), "lengths should differ widely");
    let together = encoder.embed(&batch).unwrap();
    assert_eq!(together.len(), VARIED.len());
    for (i, input) in batch.iter().enumerate() {
        let alone = encoder.embed(std::slice::from_ref(input)).unwrap();
        let diff = max_abs_diff(&together[i], &alone[0]);
        assert!(diff < 1e-5, "input {i} differs by {diff} in a batch");
    }
}

/// bf16 products (the default on CPUs with AMX) against sentence-transformers' f32
/// values: the same similarities to 1e-3, the reference components to 1e-3, and every
/// vector within a cosine of 0.9999 of the f32 encoder's, which the tests above hold to
/// the reference. The bounds are measured, not derived: on the Sapphire Rapids machine
/// the components moved by at most 3.1e-4 and the cosine fell to 0.99998 at worst over
/// 1,000 verses (`engram bench embed`).
#[test]
fn bf16_products_keep_the_reference_values() {
    let bf16 = bf16_products();
    assert_eq!(bf16.matmul_kind(), Kind::BFloat16);
    let v = assert_reference_similarities(&bf16);
    let reference = [0.033242, 0.004406, -0.006277, 0.048379, -0.138702];
    for (i, (got, want)) in v[0].iter().zip(reference).enumerate() {
        assert!((got - want).abs() < 1e-3, "component {i}: {got} vs {want}");
    }
    assert!((dot(&v[0], &v[0]).sqrt() - 1.0).abs() < 1e-5);

    let f32_vectors = embed_texts(&encoder(), &VARIED);
    let bf16_vectors = embed_texts(&bf16, &VARIED);
    for (i, (a, b)) in f32_vectors.iter().zip(&bf16_vectors).enumerate() {
        let c = cosine(a, b);
        assert!(c > 0.9999, "input {i}: cosine {c} between f32 and bf16 products");
        // And not the f32 path under another name.
        assert!(max_abs_diff(a, b) > 1e-7, "input {i}: bf16 products gave the f32 vector");
    }
}

/// With bf16 products an input's vector moves a little with what it is batched with:
/// oneDNN picks its kernel by the number of rows, a different summation order changes a
/// product by an f32 rounding, and where that flips a bf16 rounding it grows through the
/// layers. `engram bench embed` measures it over 1,000 verses (least cosine 0.99999
/// between batches of 1 and 32), below what the precision costs anyway (0.99998 between
/// f32 and bf16 products). A mask that leaked padding into the softmax would move a
/// short input's vector by far more; the f32 test above holds the shared mask to 1e-5.
#[test]
fn bf16_products_barely_move_a_vector_in_a_batch() {
    let bf16 = bf16_products();
    let tokenizer = tokenizer();
    let batch: Vec<Vec<u32>> = VARIED.iter().map(|t| ids(&tokenizer, t)).collect();
    let together = bf16.embed(&batch).unwrap();
    for (i, input) in batch.iter().enumerate() {
        let alone = bf16.embed(std::slice::from_ref(input)).unwrap();
        let c = cosine(&together[i], &alone[0]);
        assert!(c > 0.99995, "input {i}: cosine {c} between its vector in a batch and alone");
    }
}

/// Cut to 256 tokens, an over-long input embeds as the tokenizer's own truncation to 256
/// does (the first 255 tokens and the closing [SEP]).
#[test]
fn an_over_long_input_is_cut_not_refused() {
    let encoder = encoder();
    let text = "memory ".repeat(150) + &"recall ".repeat(150);
    let full = ids(&tokenizer(), &text);
    assert!(full.len() > 300, "{} tokens", full.len());

    let mut truncating = tokenizer();
    truncating
        .with_truncation(Some(TruncationParams { max_length: 256, ..Default::default() }))
        .expect("turning truncation on");
    let cut = ids(&truncating, &text);
    assert_eq!(cut.len(), 256);

    let vectors = encoder.embed(&[full.clone(), cut]).unwrap();
    assert!(max_abs_diff(&vectors[0], &vectors[1]) < 1e-5);
    // The kept last token matters: cut elsewhere, without its closing [SEP], the same text
    // embeds differently, so the equality above is not one that any cut would pass.
    let no_sep = encoder.embed(&[full[..300].to_vec()]).unwrap();
    assert!(max_abs_diff(&vectors[0], &no_sep[0]) > 1e-3);
}

#[test]
fn bad_inputs_are_errors() {
    let encoder = encoder();
    assert!(encoder.embed(&[]).unwrap().is_empty());
    match encoder.embed(&[vec![101, 102], vec![]]) {
        Err(BertError::EmptyInput { index: 1 }) => {}
        other => panic!("expected EmptyInput for input 1, got {other:?}"),
    }
    match encoder.embed(&[vec![101, 30522, 102]]) {
        Err(BertError::TokenOutOfRange { index: 0, id: 30522, vocab_size: 30522 }) => {}
        other => panic!("expected TokenOutOfRange, got {other:?}"),
    }
}

#[test]
fn a_folder_without_weights_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(model_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let err = BertEncoder::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
    assert!(matches!(err, BertError::NoWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn an_unknown_activation_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    assert!(config.contains("\"hidden_act\": \"gelu\""));
    std::fs::write(dir.path().join("config.json"), config.replace("\"gelu\"", "\"swish\"")).unwrap();
    let err = BertEncoder::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
    match &err {
        BertError::UnsupportedActivation { activation, .. } => assert_eq!(activation, "swish"),
        other => panic!("expected UnsupportedActivation, got {other:?}"),
    }
    assert!(err.to_string().contains("swish"), "{err}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_an_error_naming_it() {
    const NAME: &str = "encoder.layer.3.intermediate.dense.weight";
    let tensors: Vec<(String, Tensor)> = real_tensors()
        .into_iter()
        .map(|(name, t)| if name == NAME { (name, t.tr().contiguous()) } else { (name, t) })
        .collect();
    let dir = scratch_model(&tensors);
    let err = BertEncoder::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
    match &err {
        BertError::TensorShape { path, name, expected, found } => {
            assert_eq!(name, NAME);
            assert_eq!(path, &dir.path().join("model.safetensors"));
            assert_eq!(expected, &[1536, 384]);
            assert_eq!(found, &[384, 1536]);
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    assert!(err.to_string().contains(NAME), "{err}");
}

#[test]
fn a_small_wrong_tensor_set_is_an_error_not_a_panic() {
    let tensors =
        vec![("embeddings.word_embeddings.weight".to_string(), Tensor::zeros([10, 384], (Kind::Float, Device::Cpu)))];
    let dir = scratch_model(&tensors);
    let err = BertEncoder::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
    match &err {
        BertError::TensorShape { name, expected, found, .. } => {
            assert_eq!(name, "embeddings.word_embeddings.weight");
            assert_eq!((expected.as_slice(), found.as_slice()), (&[30522, 384][..], &[10, 384][..]));
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
}

#[test]
fn a_missing_tensor_is_an_error_naming_it() {
    const NAME: &str = "encoder.layer.5.output.LayerNorm.bias";
    let tensors: Vec<(String, Tensor)> = real_tensors().into_iter().filter(|(name, _)| name != NAME).collect();
    let dir = scratch_model(&tensors);
    match BertEncoder::load(dir.path(), Device::Cpu, Kind::Float) {
        Err(BertError::MissingTensor { name, .. }) => assert_eq!(name, NAME),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

/// Checkpoints saved from `BertForMaskedLM` and the like name everything `bert.…`.
#[test]
fn tensor_names_with_a_bert_prefix_load_the_same_model() {
    let tensors: Vec<(String, Tensor)> =
        real_tensors().into_iter().map(|(name, t)| (format!("bert.{name}"), t)).collect();
    let dir = scratch_model(&tensors);
    let prefixed = BertEncoder::load(dir.path(), Device::Cpu, Kind::Float).expect("loading with bert. names");
    // No modules.json in the scratch folder: mean pooling without normalisation.
    assert_eq!(prefixed.pooling(), Pooling::Mean);
    assert!(!prefixed.normalizes());
    let text = ["A man is eating food."];
    let raw = &embed_texts(&prefixed, &text)[0];
    let reference = &embed_texts(&encoder(), &text)[0];
    let norm = dot(raw, raw).sqrt();
    let unit: Vec<f32> = raw.iter().map(|x| x / norm).collect();
    assert!((norm - 1.0).abs() > 1e-2, "unnormalised vectors should not be unit length");
    assert!(max_abs_diff(&unit, reference) < 1e-6);
}
