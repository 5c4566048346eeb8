//! Transformer building blocks shared by the text encoder and the TexTok ViTs.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, softmax};

/// Additive attention bias for masked-out keys. Large enough that `exp` underflows to 0 in f32,
/// small enough that adding it to a score never overflows.
pub const MASKED_KEY_BIAS: f32 = -1.0e9;

/// Multi-head self-attention with separate query/key/value/output projections (BERT layout).
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    pub heads: usize,
}

#[derive(Config, Debug)]
pub struct SelfAttentionConfig {
    pub width: usize,
    pub heads: usize,
}

impl SelfAttentionConfig {
    pub fn init(&self, device: &Device) -> SelfAttention {
        assert_eq!(
            self.width % self.heads,
            0,
            "attention width must divide into heads"
        );
        let linear = || LinearConfig::new(self.width, self.width).init(device);
        SelfAttention {
            query: linear(),
            key: linear(),
            value: linear(),
            output: linear(),
            heads: self.heads,
        }
    }
}

impl SelfAttention {
    /// - `x`: `[batch, seq, width]`
    /// - `key_bias`: `[batch, seq]`, added to every query's score for that key (0 = keep,
    ///   [`MASKED_KEY_BIAS`] = ignore), or `None` to attend everywhere
    /// - returns `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<3>, key_bias: Option<Tensor<2>>) -> Tensor<3> {
        let [batch, seq, width] = x.dims();
        let head_dim = width / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));
        // [batch, heads, seq, seq]
        let mut scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f64).sqrt());
        if let Some(bias) = key_bias {
            scores = scores + bias.reshape([batch, 1, 1, seq]);
        }
        let weights = softmax(scores, 3);
        let context = weights
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, seq, width]);
        self.output.forward(context)
    }
}

/// Two-layer MLP with exact (erf) GELU.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(width: usize, hidden: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(width, hidden).init(device),
            fc2: LinearConfig::new(hidden, width).init(device),
        }
    }

    /// `[..., width]` -> `[..., width]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// Pre-norm ViT block: `x + attn(ln(x))`, then `x + mlp(ln(x))`.
#[derive(Module, Debug)]
pub struct VitBlock {
    pub norm1: LayerNorm,
    pub attention: SelfAttention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

#[derive(Config, Debug)]
pub struct VitBlockConfig {
    pub width: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
}

impl VitBlockConfig {
    pub fn init(&self, device: &Device) -> VitBlock {
        VitBlock {
            norm1: LayerNormConfig::new(self.width)
                .with_epsilon(1e-6)
                .init(device),
            attention: SelfAttentionConfig::new(self.width, self.heads).init(device),
            norm2: LayerNormConfig::new(self.width)
                .with_epsilon(1e-6)
                .init(device),
            mlp: Mlp::new(self.width, self.mlp_hidden, device),
        }
    }
}

impl VitBlock {
    /// - `x`: `[batch, seq, width]`; `key_bias`: `[batch, seq]` (see [`SelfAttention::forward`])
    /// - returns `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<3>, key_bias: Option<Tensor<2>>) -> Tensor<3> {
        let x = x.clone() + self.attention.forward(self.norm1.forward(x), key_bias);
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// Multi-head cross-attention: queries from `x`, keys and values from a context (the caption).
#[derive(Module, Debug)]
pub struct CrossAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    pub heads: usize,
}

impl CrossAttention {
    /// `width`: query/output width; `context_width`: width of the context tokens.
    pub fn new(width: usize, context_width: usize, heads: usize, device: &Device) -> Self {
        assert_eq!(width % heads, 0, "attention width must divide into heads");
        Self {
            query: LinearConfig::new(width, width).init(device),
            key: LinearConfig::new(context_width, width).init(device),
            value: LinearConfig::new(context_width, width).init(device),
            output: LinearConfig::new(width, width).init(device),
            heads,
        }
    }

    /// - `x`: `[batch, seq, width]`; `context`: `[batch, ctx, context_width]`
    /// - `context_bias`: `[batch, ctx]` (0 = attend, [`MASKED_KEY_BIAS`] = padding)
    /// - returns `[batch, seq, width]`
    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>, context_bias: Tensor<2>) -> Tensor<3> {
        let [batch, seq, width] = x.dims();
        let [_, ctx, _] = context.dims();
        let head_dim = width / self.heads;
        let q = self
            .query
            .forward(x)
            .reshape([batch, seq, self.heads, head_dim])
            .swap_dims(1, 2);
        let k = self
            .key
            .forward(context.clone())
            .reshape([batch, ctx, self.heads, head_dim])
            .swap_dims(1, 2);
        let v = self
            .value
            .forward(context)
            .reshape([batch, ctx, self.heads, head_dim])
            .swap_dims(1, 2);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f64).sqrt())
            + context_bias.reshape([batch, 1, 1, ctx]);
        let context = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, seq, width]);
        self.output.forward(context)
    }
}
