//! TexTok (arXiv 2412.05796): a ViT tokenizer/detokenizer conditioned in-context on caption
//! embeddings, and the identical "Baseline" with no text tokens.
//!
//! Tokenizer E: ViT over `[patch embeddings P | learnable latent tokens L | projected text T]`;
//! the N latent outputs are projected to continuous tokens Z (`[N, d]`, d = 8).
//! Detokenizer D: ViT over `[learnable patch queries P' | linear(Z[..k]) | projected text T]`;
//! the patch outputs are projected to pixels.
//!
//! Any budget from one checkpoint: the detokenizer reads only the first k of the N tokens, and
//! training samples k per step (nested tail drop), so one model serves the whole 32-256 slider.
//!
//! Our one deviation from the paper, switched by `pyramid` (on in `tiny`/`small`): a
//! coarse-to-fine pyramid shortcut in both halves. Token slots are laid out as levels of 1x1,
//! 2x2, 4x4, ... cells over the patch grid (slot 0 = the whole image, slots 1-4 = its quarters,
//! ...). The encoder's latent queries start from the average-pooled patch embeddings of their
//! cell, and the decoder's patch queries start from the (projected) tokens of every cell that
//! covers them, as far as the budget reaches. Why: with plain learned queries both attention
//! stacks start almost uniform, every token carries little more than the mean colour, and the
//! encoder and decoder have to discover spatial routing together; the `small` model reproduced
//! the same mean image for every input for its first 1,800 CPU steps (2.6 h). With the
//! shortcut the model starts as a coarse-to-fine patch autoencoder that the transformers refine,
//! and its coarse-first order suits nested budgets. `pyramid_fill` (on in `small` since the
//! second training round) repeats the finest level until every slot has a cell: without it the
//! slots after the pyramid (85 of 256 on an 8x8 grid) went unused and 128 tokens reconstructed
//! exactly as well as 256.

use std::path::Path;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::layers::{MASKED_KEY_BIAS, VitBlock, VitBlockConfig};
use super::text_encoder::TextEmbeddings;
use crate::checkpoint::{
    CheckpointError, CheckpointFile, HashPrecision, StoredPrecision, save_module,
};

/// Checkpoint kind of TexTok and Baseline tokenizers (the config says which).
pub const KIND_TEXTOK: &str = "textok-tokenizer";

/// Smallest token budget the app offers (the paper's smallest).
pub const MIN_BUDGET: usize = 32;

#[derive(Config, Debug, PartialEq)]
pub struct TexTokConfig {
    /// Square input/output resolution in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Transformer width D.
    pub width: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    /// true: TexTok (caption tokens in both halves); false: the Baseline without text.
    pub text_conditioning: bool,
    /// N_max: latent tokens produced by the tokenizer; budgets are prefixes of them.
    #[config(default = 256)]
    pub max_tokens: usize,
    /// d: channels of each continuous token.
    #[config(default = 8)]
    pub token_dim: usize,
    /// Width of the text encoder's embeddings (384 for all-MiniLM-L6-v2).
    #[config(default = 384)]
    pub text_dim: usize,
    /// Caption tokens the text encoder keeps for this model.
    #[config(default = 32)]
    pub max_text_tokens: usize,
    /// The coarse-to-fine pyramid shortcut (see the module docs). `None` (absent in older
    /// checkpoints) means plain learned queries, as in the paper.
    pub pyramid: Option<bool>,
    /// With the pyramid: after the finest level, repeat it until every token slot has a cell,
    /// so tokens beyond the pyramid (85 of 256 slots on an 8x8 grid) add more channels per
    /// patch instead of depending on attention alone. `None` (older checkpoints) = no repeats.
    pub pyramid_fill: Option<bool>,
    /// Channels of the refinement head after the detokenizer (see [`RefineHead`]); `None`
    /// (older checkpoints, and the presets) = none: the patches' pixels are the image.
    pub refine_channels: Option<usize>,
}

impl TexTokConfig {
    /// For tests: 32 px, patch 8, width 32, 1+1 layers.
    pub fn tiny(text_conditioning: bool) -> Self {
        Self::new(32, 8, 32, 1, 1, 2, 64, text_conditioning).with_pyramid(Some(true))
    }

    /// CPU-trainable: 128 px, patch 16 (an 8x8 grid), width 192, 4+4 layers. Patch 8 (16x16
    /// grid) cost twice the time per image on our 2-core CPU and did not leave the mean-image
    /// plateau in the time a session has.
    pub fn small(text_conditioning: bool) -> Self {
        Self::new(128, 16, 192, 4, 4, 3, 768, text_conditioning)
            .with_pyramid(Some(true))
            .with_pyramid_fill(Some(true))
    }

    /// The paper's TexTok-B: 256 px, patch 8, width 768, 12+12 layers, 12 heads, MLP 3072
    /// (captions: the paper uses 128 T5 tokens; we keep our text encoder's default).
    pub fn base(text_conditioning: bool) -> Self {
        Self::new(256, 8, 768, 12, 12, 12, 3072, text_conditioning)
    }

    /// A preset by name: `tiny`, `small` or `base`.
    pub fn preset(name: &str, text_conditioning: bool) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny(text_conditioning)),
            "small" => Some(Self::small(text_conditioning)),
            "base" => Some(Self::base(text_conditioning)),
            _ => None,
        }
    }

    pub const PRESETS: [&'static str; 3] = ["tiny", "small", "base"];

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Checks the config describes a buildable model of sane size (checkpoint metadata is
    /// untrusted input: a bad config must be an error, not a panic or a huge allocation).
    pub fn validate(&self) -> Result<(), String> {
        // What the forward pass holds per image, bounded so that a small crafted file cannot
        // ask for gigabytes: attention scores grow with the square of the sequence and with
        // the head count, the refinement head's activations with its channels x pixels.
        let sequence = self
            .patch_size
            .checked_mul(self.patch_size)
            .map_or(usize::MAX, |p| {
                (self.image_size.saturating_mul(self.image_size) / p.max(1))
                    .saturating_add(self.max_tokens)
                    .saturating_add(self.max_text_tokens)
            });
        let refine_activations = self.refine_channels.map_or(0, |c| {
            c.saturating_mul(self.image_size.saturating_mul(self.image_size))
        });
        let checks: [(bool, &str); 13] = [
            (
                self.refine_channels.is_none_or(|c| (1..=256).contains(&c)),
                "refine_channels must be 1..=256",
            ),
            (
                refine_activations <= 256 * 128 * 128,
                "refine_channels x image_size^2 must be at most 256 x 128^2",
            ),
            (
                sequence <= 4096,
                "patches + max_tokens + max_text_tokens must be at most 4096",
            ),
            (
                self.heads > 0 && self.width / self.heads >= 8,
                "heads must be at least 8 channels wide",
            ),
            (
                self.patch_size > 0 && self.image_size.is_multiple_of(self.patch_size),
                "image_size must be a multiple of patch_size",
            ),
            (
                (8..=1024).contains(&self.image_size),
                "image_size must be 8..=1024",
            ),
            ((1..=8192).contains(&self.width), "width must be 1..=8192"),
            (
                self.heads > 0 && self.width.is_multiple_of(self.heads),
                "width must be a multiple of heads",
            ),
            (
                (1..=32768).contains(&self.mlp_hidden),
                "mlp_hidden must be 1..=32768",
            ),
            (
                self.encoder_layers <= 64 && self.decoder_layers <= 64,
                "at most 64 layers per half",
            ),
            (
                (MIN_BUDGET..=4096).contains(&self.max_tokens),
                "max_tokens must be 32..=4096",
            ),
            (
                (1..=256).contains(&self.token_dim) && (1..=8192).contains(&self.text_dim),
                "token_dim/text_dim out of range",
            ),
            (
                (2..=512).contains(&self.max_text_tokens),
                "max_text_tokens must be 2..=512",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(()),
        }
    }

    /// Parameters in the weight matrices and embeddings this config builds (biases and norms
    /// left out): a file holding fewer cannot be this model, and a checkpoint whose config says
    /// otherwise is refused before the model is allocated (a crafted config of width 8192 and
    /// 64 layers per half is within [`Self::validate`]'s limits but would need ~300 GB).
    pub fn weight_parameters(&self) -> usize {
        let d = self.width;
        let pixels = self.patch_size * self.patch_size * 3;
        let block = 4 * d * d + 2 * d * self.mlp_hidden;
        let text = if self.text_conditioning {
            2 * self.text_dim * d
        } else {
            0
        };
        let refine = self.refine_channels.map_or(0, |c| 2 * 3 * c * 9);
        2 * pixels * d
            + 2 * self.num_patches() * d
            + 2 * self.max_tokens * d
            + 2 * self.token_dim * d
            + text
            + (self.encoder_layers + self.decoder_layers) * block
            + refine
    }

    /// Builds a randomly initialised model. Call [`Self::validate`] first on untrusted configs.
    pub fn init(&self, device: &Device) -> TexTok {
        let d = self.width;
        let pixels = self.patch_size * self.patch_size * 3;
        let init_param = |shape: [usize; 3]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.02),
                device,
            ))
        };
        let blocks = |n: usize| {
            (0..n)
                .map(|_| VitBlockConfig::new(d, self.heads, self.mlp_hidden).init(device))
                .collect::<Vec<_>>()
        };
        let text_proj = || {
            self.text_conditioning
                .then(|| LinearConfig::new(self.text_dim, d).init(device))
        };
        let norm = || LayerNormConfig::new(d).with_epsilon(1e-6).init(device);
        TexTok {
            patch_embed: LinearConfig::new(pixels, d).init(device),
            encoder_patch_pos: init_param([1, self.num_patches(), d]),
            latent_tokens: init_param([1, self.max_tokens, d]),
            encoder_text_proj: text_proj(),
            encoder_blocks: blocks(self.encoder_layers),
            encoder_norm: norm(),
            to_tokens: LinearConfig::new(d, self.token_dim).init(device),
            from_tokens: LinearConfig::new(self.token_dim, d).init(device),
            decoder_token_pos: init_param([1, self.max_tokens, d]),
            decoder_patch_queries: init_param([1, self.num_patches(), d]),
            decoder_text_proj: text_proj(),
            decoder_blocks: blocks(self.decoder_layers),
            decoder_norm: norm(),
            to_pixels: LinearConfig::new(d, pixels).init(device),
            refine: self.refine_channels.map(|c| RefineHead::new(c, device)),
            patch_size: self.patch_size,
            grid: self.grid(),
            max_tokens: self.max_tokens,
            pyramid: self.pyramid.unwrap_or(false),
            pyramid_fill: self.pyramid_fill.unwrap_or(false),
        }
    }
}

#[derive(Module, Debug)]
pub struct TexTok {
    // Tokenizer E.
    pub patch_embed: Linear,
    pub encoder_patch_pos: Param<Tensor<3>>,
    pub latent_tokens: Param<Tensor<3>>,
    pub encoder_text_proj: Option<Linear>,
    pub encoder_blocks: Vec<VitBlock>,
    pub encoder_norm: LayerNorm,
    pub to_tokens: Linear,
    // Detokenizer D.
    pub from_tokens: Linear,
    pub decoder_token_pos: Param<Tensor<3>>,
    pub decoder_patch_queries: Param<Tensor<3>>,
    pub decoder_text_proj: Option<Linear>,
    pub decoder_blocks: Vec<VitBlock>,
    pub decoder_norm: LayerNorm,
    pub to_pixels: Linear,
    /// Optional convolutional refinement of the assembled image (part of D).
    pub refine: Option<RefineHead>,
    pub patch_size: usize,
    pub grid: usize,
    pub max_tokens: usize,
    pub pyramid: bool,
    pub pyramid_fill: bool,
}

impl TexTok {
    /// Stops gradient tracking in the tokenizer half (patch embedding, positions, latent
    /// queries, text projection, blocks, projection to tokens), for training the detokenizer
    /// alone: burn then records no graph for the encoder, which would otherwise be kept alive
    /// (a detached encoder graph grew one training process to 22 GB in 70 steps).
    pub fn with_frozen_encoder(mut self) -> Self {
        self.patch_embed = self.patch_embed.no_grad();
        self.encoder_patch_pos = self.encoder_patch_pos.no_grad();
        self.latent_tokens = self.latent_tokens.no_grad();
        self.encoder_text_proj = self.encoder_text_proj.map(Module::no_grad);
        self.encoder_blocks = self
            .encoder_blocks
            .into_iter()
            .map(Module::no_grad)
            .collect();
        self.encoder_norm = self.encoder_norm.no_grad();
        self.to_tokens = self.to_tokens.no_grad();
        self
    }

    pub fn is_text_conditioned(&self) -> bool {
        self.encoder_text_proj.is_some()
    }

    /// Tokenizer E.
    /// - `image`: `[batch, 3, H, W]`, values in [-1, 1], H = W = image_size
    /// - `text`: the caption embeddings (ignored by the Baseline; TexTok without text runs
    ///   with no text tokens)
    /// - returns the continuous tokens `[batch, max_tokens, token_dim]`
    pub fn encode(&self, image: Tensor<4>, text: Option<&TextEmbeddings>) -> Tensor<3> {
        let [batch, _, _, _] = image.dims();
        let content = self.patch_embed.forward(self.patchify(image));
        let mut latents = self.latent_tokens.val().repeat_dim(0, batch);
        if self.pyramid {
            latents = latents + self.pooled_pyramid(content.clone());
        }
        let patches = content + self.encoder_patch_pos.val();
        let prefix = [patches, latents];
        let x = self.run_blocks(&self.encoder_blocks, &self.encoder_text_proj, prefix, text);
        let num_patches = self.grid * self.grid;
        let latents = self
            .encoder_norm
            .forward(x)
            .narrow(1, num_patches, self.max_tokens);
        self.to_tokens.forward(latents)
    }

    /// Detokenizer D.
    /// - `tokens`: `[batch, k, token_dim]`, the first k tokens (1 <= k <= max_tokens)
    /// - `text`: the same caption embeddings given to [`Self::encode`]
    /// - returns the image `[batch, 3, H, W]` (not clamped; ~[-1, 1])
    pub fn decode(&self, tokens: Tensor<3>, text: Option<&TextEmbeddings>) -> Tensor<4> {
        let [batch, k, _] = tokens.dims();
        assert!(
            k >= 1 && k <= self.max_tokens,
            "token budget {k} outside 1..={}",
            self.max_tokens
        );
        let content = self.from_tokens.forward(tokens);
        let mut queries = self.decoder_patch_queries.val().repeat_dim(0, batch);
        if self.pyramid {
            queries = queries + self.unpooled_pyramid(content.clone());
        }
        let tokens = content + self.decoder_token_pos.val().narrow(1, 0, k);
        let x = self.run_blocks(
            &self.decoder_blocks,
            &self.decoder_text_proj,
            [queries, tokens],
            text,
        );
        let num_patches = self.grid * self.grid;
        let patches = self.decoder_norm.forward(x).narrow(1, 0, num_patches);
        let image = self.unpatchify(self.to_pixels.forward(patches));
        match &self.refine {
            Some(head) => head.forward(image),
            None => image,
        }
    }

    /// Encode, keep the first `budget` tokens, decode: `[batch, 3, H, W]` -> `[batch, 3, H, W]`.
    pub fn reconstruct(
        &self,
        image: Tensor<4>,
        text: Option<&TextEmbeddings>,
        budget: usize,
    ) -> Tensor<4> {
        let tokens = self.encode(image, text);
        self.decode(tokens.narrow(1, 0, budget), text)
    }

    /// Average-pooled patch embeddings, coarse to fine: levels of 1x1, 2x2, 4x4, ... cells
    /// (each a divisor of the grid), concatenated and cut or zero-padded to `max_tokens`.
    /// - `content`: `[batch, patches, width]` -> `[batch, max_tokens, width]`
    fn pooled_pyramid(&self, content: Tensor<3>) -> Tensor<3> {
        let [batch, _, width] = content.dims();
        let grid = self.grid;
        let cells = content.reshape([batch, grid, grid, width]);
        let mut levels = Vec::new();
        let mut total = 0;
        for side in self.pyramid_sides(self.max_tokens) {
            let cell = grid / side;
            let pooled = cells
                .clone()
                .reshape([batch, side, cell, side, cell, width])
                .mean_dim(4)
                .mean_dim(2)
                .reshape([batch, side * side, width]);
            levels.push(pooled);
            total += side * side;
        }
        let device = cells.device();
        if total < self.max_tokens {
            levels.push(Tensor::zeros(
                [batch, self.max_tokens - total, width],
                &device,
            ));
        }
        Tensor::cat(levels, 1).narrow(1, 0, self.max_tokens)
    }

    /// Sides of the pyramid levels that start within the first `slots` token slots: 1, 2, 4,
    /// ... while they divide the grid, then (with `pyramid_fill`) the finest level again.
    fn pyramid_sides(&self, slots: usize) -> Vec<usize> {
        let grid = self.grid;
        let mut sides = Vec::new();
        let (mut start, mut side) = (0, 1);
        while start < slots && side <= grid && grid.is_multiple_of(side) {
            sides.push(side);
            start += side * side;
            side *= 2;
        }
        let finest = sides.last().copied();
        if let (true, Some(finest)) = (self.pyramid_fill, finest) {
            while start < slots {
                sides.push(finest);
                start += finest * finest;
            }
        }
        sides
    }

    /// Where each token slot sits in the pyramid: `[centre_x, centre_y, level]` with the centre
    /// in patch units and the level counted from 0 (the whole image), for the slots that have
    /// a cell, in slot order (repeats of the finest level under `pyramid_fill` count as further
    /// levels). Empty without the pyramid: its slots are not tied to places.
    pub fn slot_cells(&self) -> Vec<[f32; 3]> {
        if !self.pyramid {
            return Vec::new();
        }
        let mut cells = Vec::new();
        for (level, side) in self.pyramid_sides(self.max_tokens).into_iter().enumerate() {
            let size = self.grid as f32 / side as f32;
            for row in 0..side {
                for col in 0..side {
                    let centre = |i: usize| (i as f32 + 0.5) * size;
                    cells.push([centre(col), centre(row), level as f32]);
                }
            }
        }
        cells.truncate(self.max_tokens);
        cells
    }

    /// The decoder's half of the pyramid: each patch receives the sum of the tokens whose cell
    /// covers it, for the tokens present (the budget may end inside a level).
    /// - `tokens`: `[batch, k, width]` -> `[batch, patches, width]`
    fn unpooled_pyramid(&self, tokens: Tensor<3>) -> Tensor<3> {
        let [batch, budget, width] = tokens.dims();
        let grid = self.grid;
        let device = tokens.device();
        let mut sum = Tensor::<3>::zeros([batch, grid * grid, width], &device);
        let mut start = 0;
        for side in self.pyramid_sides(budget) {
            let cells = side * side;
            let present = cells.min(budget - start);
            let mut level = tokens.clone().narrow(1, start, present);
            if present < cells {
                let missing = Tensor::zeros([batch, cells - present, width], &device);
                level = Tensor::cat(vec![level, missing], 1);
            }
            let cell = grid / side;
            let spread = level
                .reshape([batch, side, 1, side, 1, width])
                .repeat_dim(2, cell)
                .repeat_dim(4, cell)
                .reshape([batch, grid * grid, width]);
            sum = sum + spread;
            start += cells;
        }
        sum
    }

    /// Concatenates `prefix` with the projected caption (if this model uses text), runs the
    /// blocks with padding masked out, and returns the full sequence `[batch, seq, width]`.
    fn run_blocks(
        &self,
        blocks: &[VitBlock],
        text_proj: &Option<Linear>,
        prefix: [Tensor<3>; 2],
        text: Option<&TextEmbeddings>,
    ) -> Tensor<3> {
        let [batch, prefix_a, _] = prefix[0].dims();
        let prefix_b = prefix[1].dims()[1];
        let (mut x, key_bias) = match (text_proj, text) {
            (Some(proj), Some(text)) => {
                let text_tokens = proj.forward(text.hidden.clone());
                let device = text_tokens.device();
                let visible = Tensor::<2>::zeros([batch, prefix_a + prefix_b], &device);
                let padding = (text.mask.clone().neg() + 1.0).mul_scalar(MASKED_KEY_BIAS);
                let [p0, p1] = prefix;
                (
                    Tensor::cat(vec![p0, p1, text_tokens], 1),
                    Some(Tensor::cat(vec![visible, padding], 1)),
                )
            }
            _ => (Tensor::cat(prefix.to_vec(), 1), None),
        };
        for block in blocks {
            x = block.forward(x, key_bias.clone());
        }
        x
    }

    /// `[batch, 3, H, W]` -> `[batch, patches, patch*patch*3]` (row-major patches, pixel-major
    /// inside a patch, channels last).
    fn patchify(&self, image: Tensor<4>) -> Tensor<3> {
        let [batch, channels, _, _] = image.dims();
        let (g, s) = (self.grid, self.patch_size);
        image
            .reshape([batch, channels, g, s, g, s])
            .permute([0, 2, 4, 3, 5, 1])
            .reshape([batch, g * g, s * s * channels])
    }

    /// Inverse of [`Self::patchify`].
    fn unpatchify(&self, patches: Tensor<3>) -> Tensor<4> {
        let [batch, _, _] = patches.dims();
        let (g, s) = (self.grid, self.patch_size);
        patches
            .reshape([batch, g, g, s, s, 3])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([batch, 3, g * s, g * s])
    }

    /// Loads a TexTok or Baseline checkpoint, validating config and every tensor.
    pub fn load(path: &Path, device: &Device) -> Result<(TexTok, TexTokConfig), CheckpointError> {
        Self::from_checkpoint(&CheckpointFile::read_kind(path, KIND_TEXTOK)?, device)
    }

    /// The fields of the tokenizer half (the ones [`Self::with_frozen_encoder`] freezes): a
    /// stored tensor belongs to it when its name starts with one of these and a dot, or is one.
    pub const ENCODER_FIELDS: [&str; 7] = [
        "patch_embed",
        "encoder_patch_pos",
        "latent_tokens",
        "encoder_text_proj",
        "encoder_blocks",
        "encoder_norm",
        "to_tokens",
    ];

    /// Config entries that only the detokenizer reads: a refinement head added to a trained
    /// model (`train tokenizer --refine-head`) keeps its tokens, and their hash.
    pub const DECODER_ONLY_CONFIG: [&str; 1] = ["refine_channels"];

    /// Whether the stored tensor `name` is part of the tokenizer half.
    pub fn is_encoder_tensor(name: &str) -> bool {
        let field = name.split('.').next().unwrap_or(name);
        Self::ENCODER_FIELDS.contains(&field)
    }

    /// A hash of what a checkpoint's tokens depend on: its config and its tokenizer half.
    /// Equal for two files whose detokenizers alone differ (`train tokenizer
    /// --freeze-encoder`), so tokens cached for one serve the other. The weights are hashed at
    /// f16 precision, which `export-f16` keeps: a run's f32 file and its f16 export make the
    /// same tokens to that precision, and a DiT trained on one serves the other.
    pub fn encoder_sha256(path: &Path) -> Result<String, CheckpointError> {
        Self::encoder_sha256_of(&CheckpointFile::read_kind(path, KIND_TEXTOK)?)
    }

    /// [`Self::encoder_sha256`] of a checkpoint already read.
    pub fn encoder_sha256_of(checkpoint: &CheckpointFile) -> Result<String, CheckpointError> {
        checkpoint.expect_kind(KIND_TEXTOK)?;
        Ok(checkpoint.selected_tensors_sha256(
            Self::is_encoder_tensor,
            HashPrecision::F16,
            &Self::DECODER_ONLY_CONFIG,
        ))
    }

    /// The hash DiTs and latent caches recorded before [`Self::encoder_sha256`] rounded to
    /// f16: the exact stored values. The two agree for an f16 file (every shipped one).
    pub fn exact_encoder_sha256_of(checkpoint: &CheckpointFile) -> Result<String, CheckpointError> {
        checkpoint.expect_kind(KIND_TEXTOK)?;
        Ok(checkpoint.selected_tensors_sha256(
            Self::is_encoder_tensor,
            HashPrecision::F32,
            &Self::DECODER_ONLY_CONFIG,
        ))
    }

    /// Whether `recorded`, a DiT's or a latent cache's encoder hash, names this checkpoint's
    /// encoder, as hashed now or before the rounding.
    pub fn encoder_matches(
        checkpoint: &CheckpointFile,
        recorded: &str,
    ) -> Result<bool, CheckpointError> {
        Ok(Self::encoder_sha256_of(checkpoint)? == recorded
            || Self::exact_encoder_sha256_of(checkpoint)? == recorded)
    }

    /// [`Self::load`] from a checkpoint already read.
    pub fn from_checkpoint(
        checkpoint: &CheckpointFile,
        device: &Device,
    ) -> Result<(TexTok, TexTokConfig), CheckpointError> {
        checkpoint.expect_kind(KIND_TEXTOK)?;
        let config = checkpoint.validated_config("TexTok", TexTokConfig::validate)?;
        checkpoint.expect_parameters_for_config(config.weight_parameters(), "TexTok")?;
        let fresh = crate::device::init_module(device, None, || config.init(device));
        let model = checkpoint.load_into(fresh)?;
        Ok((model, config))
    }

    /// Saves this model with `config` as a self-describing checkpoint (atomically).
    pub fn save(
        &self,
        config: &TexTokConfig,
        path: &Path,
        precision: StoredPrecision,
    ) -> Result<(), CheckpointError> {
        save_module(self, path, KIND_TEXTOK, config, precision)
    }
}

/// A small convolutional refinement of the detokenizer's image: `image + conv(gelu(conv(image)))`
/// with 3x3 kernels. Each patch's pixels come from its own linear projection, so neighbouring
/// patches disagree along their shared edge (the 16-pixel mosaic of the shipped models); two
/// 3x3 convolutions see across that edge. The second starts at zero, so a head added to a
/// trained model starts as the identity and training only moves it from there.
#[derive(Module, Debug)]
pub struct RefineHead {
    pub expand: Conv2d,
    pub activation: Gelu,
    pub project: Conv2d,
}

impl RefineHead {
    /// A head of `channels` hidden channels that starts as the identity.
    pub fn new(channels: usize, device: &Device) -> Self {
        let conv = |from: usize, to: usize| {
            Conv2dConfig::new([from, to], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let mut project = conv(channels, 3);
        project.weight = Param::from_tensor(Tensor::zeros([3, channels, 3, 3], device));
        project.bias = Some(Param::from_tensor(Tensor::zeros([3], device)));
        Self {
            expand: conv(3, channels),
            activation: Gelu::new(),
            project,
        }
    }

    /// `[batch, 3, H, W]` -> `[batch, 3, H, W]`.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        let hidden = self.activation.forward(self.expand.forward(image.clone()));
        image + self.project.forward(hidden)
    }
}

/// Seeded Gaussian noise shaped like `tokens` (`[batch, k, d]`), scaled per channel by the
/// tokens' standard deviation (over the batch and positions) and per image by `sigmas[i]`:
/// what a decoder sees from a generator that is off by `sigma` of the token spread. Used to
/// train noise-robust decoders and to measure robustness (`eval --token-noise`).
pub fn token_noise(tokens: &Tensor<3>, sigmas: &[f32], seed: u64) -> Tensor<3> {
    let [batch, k, d] = tokens.dims();
    assert_eq!(sigmas.len(), batch, "one sigma per image");
    let device = tokens.device();
    let std = tokens
        .clone()
        .detach()
        .reshape([batch * k, d])
        .var(0)
        .sqrt()
        .reshape([1, 1, d]);
    let sigmas = Tensor::<3>::from_data(TensorData::new(sigmas.to_vec(), [batch, 1, 1]), &device);
    let unit = super::diffusion::seeded_noise(seed, batch * k * d);
    let unit = Tensor::<3>::from_data(TensorData::new(unit, [batch, k, d]), &device);
    unit * std * sigmas
}
