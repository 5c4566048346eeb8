//! The frozen text encoder: captions in, per-token embeddings out.
//!
//! TexTok only sees the [`TextEncoder`] trait and [`TextEmbeddings`] (a `[batch, tokens, width]`
//! tensor plus a padding mask), so another encoder (e.g. T5 from HF safetensors and a
//! `tokenizer.json`) can be added next to [`MiniLmTextEncoder`] without touching TexTok: its
//! `text_dim` config entry is simply that encoder's width.

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

use super::layers::{MASKED_KEY_BIAS, SelfAttention, SelfAttentionConfig};
use crate::checkpoint::{CheckpointError, CheckpointFile};

/// Default number of caption tokens kept (the paper uses 128 with T5; 32 covers our captions).
pub const DEFAULT_MAX_TEXT_TOKENS: usize = 32;

/// Captions longer than this many characters are cut before tokenizing: tokenizing an endless
/// string would take unbounded time, and only the first `max_tokens` tokens are kept anyway.
pub const MAX_CAPTION_CHARS: usize = 10_000;

/// Per-token caption embeddings for a batch, padded to the longest caption.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    /// `[batch, tokens, width]`: last hidden states (padding positions hold garbage; use `mask`).
    pub hidden: Tensor<3>,
    /// `[batch, tokens]`: 1.0 for a real token, 0.0 for padding.
    pub mask: Tensor<2>,
    /// Real tokens per caption.
    pub lengths: Vec<usize>,
}

/// How a caption tokenizes, for the caption editor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    /// Tokens the caption needs, special tokens included.
    pub needed: usize,
    /// Tokens that are kept (`min(needed, max_tokens)`).
    pub kept: usize,
}

impl TokenCount {
    pub fn truncated(&self) -> bool {
        self.needed > self.kept
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TextEncoderError {
    #[error("{path}: cannot load tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizing the caption failed: {0}")]
    Tokenize(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("max_text_tokens must be between 2 and {max}, got {got}")]
    BadMaxTokens { got: usize, max: usize },
    #[error("no captions given")]
    EmptyBatch,
}

/// A frozen caption encoder.
pub trait TextEncoder: Send {
    /// Short name for logs and model cards.
    fn name(&self) -> &str;
    /// Width of each token embedding (TexTok's `text_dim`).
    fn width(&self) -> usize;
    /// Tokens kept per caption.
    fn max_tokens(&self) -> usize;
    /// How many tokens `caption` uses, and how many are kept.
    fn count_tokens(&self, caption: &str) -> Result<TokenCount, TextEncoderError>;
    /// Encodes a batch of captions.
    fn encode(&self, captions: &[&str]) -> Result<TextEmbeddings, TextEncoderError>;
}

/// Cuts a caption to [`MAX_CAPTION_CHARS`] characters.
pub fn clip_caption(caption: &str) -> &str {
    match caption.char_indices().nth(MAX_CAPTION_CHARS) {
        Some((end, _)) => &caption[..end],
        None => caption,
    }
}

/// all-MiniLM-L6-v2: a 6-layer BERT, width 384 (sentence-transformers).
#[derive(Config, Debug, PartialEq)]
pub struct MiniLmConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

impl MiniLmConfig {
    /// The shapes of all-MiniLM-L6-v2.
    pub fn all_minilm_l6_v2() -> Self {
        Self::new(30522, 384, 6, 12, 1536, 512, 2, 1e-12)
    }

    /// Checks a config read from an (untrusted) checkpoint describes a sane model.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 5] = [
            (
                (1..=1_000_000).contains(&self.vocab_size)
                    && (1..=16).contains(&self.type_vocab_size),
                "vocab_size must be 1..=1000000 and type_vocab_size 1..=16",
            ),
            (
                (1..=8192).contains(&self.hidden_size),
                "hidden_size must be 1..=8192",
            ),
            (
                self.num_heads > 0 && self.hidden_size.is_multiple_of(self.num_heads),
                "hidden_size must be a multiple of num_heads",
            ),
            (
                (1..=64).contains(&self.num_layers)
                    && (1..=65536).contains(&self.intermediate_size)
                    && (2..=8192).contains(&self.max_position_embeddings),
                "num_layers 1..=64, intermediate_size 1..=65536, max_position_embeddings 2..=8192",
            ),
            (
                self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0,
                "layer_norm_eps must be a positive number",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(()),
        }
    }

    /// The weight matrices' scalars (biases and norms left out): a lower bound on what a file
    /// for this config stores, checked before the model is built (call after [`Self::validate`]).
    pub fn weight_parameters(&self) -> usize {
        let h = self.hidden_size;
        let embeddings =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h;
        embeddings + self.num_layers * (4 * h * h + 2 * h * self.intermediate_size)
    }

    pub fn init(&self, device: &Device) -> MiniLm {
        let norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        MiniLm {
            word_embeddings: EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
            position_embeddings: EmbeddingConfig::new(
                self.max_position_embeddings,
                self.hidden_size,
            )
            .init(device),
            token_type_embeddings: EmbeddingConfig::new(self.type_vocab_size, self.hidden_size)
                .init(device),
            embeddings_norm: norm(),
            layers: (0..self.num_layers)
                .map(|_| BertLayer {
                    attention: SelfAttentionConfig::new(self.hidden_size, self.num_heads)
                        .init(device),
                    attention_norm: norm(),
                    intermediate: LinearConfig::new(self.hidden_size, self.intermediate_size)
                        .init(device),
                    output: LinearConfig::new(self.intermediate_size, self.hidden_size)
                        .init(device),
                    output_norm: norm(),
                })
                .collect(),
        }
    }
}

/// One post-norm BERT layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: SelfAttention,
    pub attention_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: LayerNorm,
}

impl BertLayer {
    /// `x`: `[batch, tokens, width]`, `key_bias`: `[batch, tokens]` -> `[batch, tokens, width]`
    pub fn forward(&self, x: Tensor<3>, key_bias: Tensor<2>) -> Tensor<3> {
        let x = self
            .attention_norm
            .forward(x.clone() + self.attention.forward(x, Some(key_bias)));
        let h = self
            .output
            .forward(gelu(self.intermediate.forward(x.clone())));
        self.output_norm.forward(x + h)
    }
}

/// The BERT encoder of all-MiniLM-L6-v2 (no pooler: TexTok wants every token).
#[derive(Module, Debug)]
pub struct MiniLm {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
}

impl MiniLm {
    /// - `ids`: `[batch, tokens]` token ids; `mask`: `[batch, tokens]` 1.0 real / 0.0 padding
    /// - returns the last hidden states `[batch, tokens, width]`
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<3> {
        let [batch, tokens] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..tokens as i64, &device)
            .reshape([1, tokens])
            .repeat_dim(0, batch);
        let types = Tensor::<2, Int>::zeros([batch, tokens], &device);
        let x = self.word_embeddings.forward(ids)
            + self.position_embeddings.forward(positions)
            + self.token_type_embeddings.forward(types);
        let mut x = self.embeddings_norm.forward(x);
        let key_bias = (mask.neg() + 1.0).mul_scalar(MASKED_KEY_BIAS);
        for layer in &self.layers {
            x = layer.forward(x, key_bias.clone());
        }
        x
    }
}

/// Checkpoint kind of the converted MiniLM weights.
pub const KIND_MINILM: &str = "text-encoder-minilm";

/// all-MiniLM-L6-v2 with its WordPiece tokenizer, frozen, on one device.
pub struct MiniLmTextEncoder {
    model: MiniLm,
    tokenizer: Tokenizer,
    counter: CaptionTokenCounter,
    config: MiniLmConfig,
    max_tokens: usize,
    device: Device,
}

impl std::fmt::Debug for MiniLmTextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmTextEncoder")
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl MiniLmTextEncoder {
    /// Loads `model.safetensors` and `tokenizer.json` from `dir` (see `models/text-encoder`).
    pub fn load(dir: &Path, max_tokens: usize, device: &Device) -> Result<Self, TextEncoderError> {
        let checkpoint = CheckpointFile::read_kind(&dir.join("model.safetensors"), KIND_MINILM)?;
        let config = checkpoint.validated_config("MiniLM", MiniLmConfig::validate)?;
        checkpoint.expect_parameters_for_config(config.weight_parameters(), "MiniLM")?;
        if !(2..=config.max_position_embeddings).contains(&max_tokens) {
            return Err(TextEncoderError::BadMaxTokens {
                got: max_tokens,
                max: config.max_position_embeddings,
            });
        }
        let fresh = crate::device::init_module(device, None, || config.init(device));
        let model = checkpoint.load_into(fresh)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = load_tokenizer(&tokenizer_path, max_tokens)?;
        // An id past the embedding table would fail deep inside the backend on the first caption
        // that uses it; say which files disagree now.
        if let Some(largest) = tokenizer.get_vocab(true).into_values().max()
            && largest as usize >= config.vocab_size
        {
            return Err(TextEncoderError::Tokenizer {
                path: tokenizer_path,
                reason: format!(
                    "it has token id {largest}, but the text encoder's vocabulary holds {} \
                     (tokenizer.json and model.safetensors are from different models)",
                    config.vocab_size
                ),
            });
        }
        // A smaller vocabulary's ids all fit, and would encode every caption as other words
        // without an error (a bert-base-cased tokenizer.json has 28,996 of MiniLM's 30,522).
        let tokenizer_vocab = tokenizer.get_vocab_size(true);
        if tokenizer_vocab != config.vocab_size {
            return Err(TextEncoderError::Tokenizer {
                path: tokenizer_path,
                reason: format!(
                    "it has {tokenizer_vocab} tokens, but the text encoder was trained with {} \
                     (tokenizer.json and model.safetensors are from different models)",
                    config.vocab_size
                ),
            });
        }
        let counter = CaptionTokenCounter::load(dir, max_tokens)?;
        Ok(Self {
            model,
            tokenizer,
            counter,
            config,
            max_tokens,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &MiniLmConfig {
        &self.config
    }
}

/// Counts a caption's tokens without loading the encoder network: the caption editor shows the
/// count on every keystroke, so it keeps one untruncated tokenizer instead of cloning one per call
/// (and is not `Clone`: share it).
pub struct CaptionTokenCounter {
    tokenizer: Tokenizer,
    max_tokens: usize,
}

impl CaptionTokenCounter {
    /// `dir` holds the text encoder's `tokenizer.json`.
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Self, TextEncoderError> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = load_tokenizer(&path, max_tokens)?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| TextEncoderError::Tokenizer {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            tokenizer,
            max_tokens,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn count(&self, caption: &str) -> Result<TokenCount, TextEncoderError> {
        let encoding = self
            .tokenizer
            .encode(clip_caption(caption), true)
            .map_err(|e| TextEncoderError::Tokenize(e.to_string()))?;
        let needed = encoding.get_ids().len();
        Ok(TokenCount {
            needed,
            kept: needed.min(self.max_tokens),
        })
    }
}

/// Loads a HF `tokenizer.json`, replacing its own padding (fixed 128) and truncation with ours:
/// pad to the longest caption of a batch, truncate to `max_tokens` (special tokens included).
pub fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer, TextEncoderError> {
    let error = |reason: String| TextEncoderError::Tokenizer {
        path: path.to_owned(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            ..Default::default()
        }))
        .map_err(|e| error(e.to_string()))?;
    let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(0);
    let pad_token = tokenizer
        .get_padding()
        .map(|p| p.pad_token.clone())
        .unwrap_or_else(|| "[PAD]".into());
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..Default::default()
    }));
    Ok(tokenizer)
}

impl TextEncoder for MiniLmTextEncoder {
    fn name(&self) -> &str {
        "all-MiniLM-L6-v2"
    }

    fn width(&self) -> usize {
        self.config.hidden_size
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn count_tokens(&self, caption: &str) -> Result<TokenCount, TextEncoderError> {
        self.counter.count(caption)
    }

    fn encode(&self, captions: &[&str]) -> Result<TextEmbeddings, TextEncoderError> {
        if captions.is_empty() {
            return Err(TextEncoderError::EmptyBatch);
        }
        let clipped: Vec<&str> = captions.iter().map(|c| clip_caption(c)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(clipped, true)
            .map_err(|e| TextEncoderError::Tokenize(e.to_string()))?;
        let batch = encodings.len();
        let tokens = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * tokens);
        let mut mask = Vec::with_capacity(batch * tokens);
        let mut lengths = Vec::with_capacity(batch);
        for encoding in &encodings {
            ids.extend(encoding.get_ids().iter().map(|&id| id as i64));
            mask.extend(encoding.get_attention_mask().iter().map(|&m| m as f32));
            lengths.push(
                encoding
                    .get_attention_mask()
                    .iter()
                    .filter(|&&m| m == 1)
                    .count(),
            );
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, tokens]), &self.device);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [batch, tokens]), &self.device);
        let hidden = self.model.forward(ids, mask.clone());
        Ok(TextEmbeddings {
            hidden,
            mask,
            lengths,
        })
    }
}
