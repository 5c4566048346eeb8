//! DiT-T2I over TexTok tokens (paper §4.1, App. C): a diffusion transformer with patch size 1
//! over the `k x 8` token sequence, learned positions for up to 256 tokens, adaLN-Zero timestep
//! conditioning, and per block: self-attention, cross-attention to the caption's text-encoder
//! embeddings, MLP. A final adaLN + linear maps back to the 8 token channels (v-prediction).

use std::ops::RangeInclusive;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::diffusion::{Schedule, ddim_step, seeded_noise};
use super::layers::{CrossAttention, MASKED_KEY_BIAS, Mlp, SelfAttention, SelfAttentionConfig};
use super::text_encoder::TextEmbeddings;
use super::textok::MIN_BUDGET;
use crate::checkpoint::{CheckpointError, CheckpointFile, StoredPrecision, save_module};
use crate::jobs::{CancelToken, Cancelled, Progress, ProgressSink};

/// Checkpoint kind of a DiT.
pub const KIND_DIT: &str = "textok-dit";

#[derive(Config, Debug, PartialEq)]
pub struct DitConfig {
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    /// Channels per token (TexTok's d).
    #[config(default = 8)]
    pub token_dim: usize,
    /// Longest token sequence (learned positions).
    #[config(default = 256)]
    pub max_tokens: usize,
    /// Width of the caption embeddings.
    #[config(default = 384)]
    pub text_dim: usize,
    /// Width of the sinusoidal timestep features.
    #[config(default = 256)]
    pub time_features: usize,
    /// Mean of the training latents (the sampler undoes the normalisation): `token_dim` entries
    /// (per channel, shared by every position) or `max_tokens * token_dim` (per position and
    /// channel, row-major; a nested budget k uses the first k rows).
    #[config(default = "vec![0.0; 8]")]
    pub latent_mean: Vec<f32>,
    /// Standard deviation of the training latents, laid out like `latent_mean`.
    #[config(default = "vec![1.0; 8]")]
    pub latent_std: Vec<f32>,
    /// Smallest token budget the trainer drew (absent in older checkpoints: any).
    pub trained_min_budget: Option<usize>,
    /// Largest token budget the trainer drew (absent in older checkpoints: any). A one-budget
    /// DiT's other budgets would be noise, so generation refuses them.
    pub trained_max_budget: Option<usize>,
    /// Also condition every block's adaLN modulation on the caption's mean-pooled embedding,
    /// added to the timestep embedding (as SD3 does with its pooled text vector), besides the
    /// cross-attention. Tried because cross-attention alone learned only the caption's broad
    /// category in a short CPU training ("red circle" and "yellow circle" gave the same image
    /// per seed); after the same 1,200 steps it did not change that (model card), so it is off
    /// by default. Absent in older checkpoints, which means off (an `Option` because burn
    /// configs only tolerate a missing key for those).
    pub pooled_caption: Option<bool>,
    /// [`crate::model::textok::TexTok::encoder_sha256`] of the tokenizer whose tokens this DiT
    /// was trained on, so generation can say when it is paired with a tokenizer that makes
    /// other tokens (its images would be noise). Absent in older checkpoints.
    pub tokenizer_encoder_sha256: Option<String>,
}

impl DitConfig {
    /// For tests.
    pub fn tiny() -> Self {
        Self::new(32, 2, 2, 64)
    }
    /// CPU-trainable: 5,548,040 parameters. (Width 256 x 8 blocks trained at 2.8 images/s on one
    /// core at ~200 tokens, 11 s per batch of 32: too slow to train in a session.)
    pub fn small() -> Self {
        Self::new(192, 6, 3, 768)
    }
    /// The paper's DiT-L shape.
    pub fn dit_l() -> Self {
        Self::new(1024, 24, 16, 4096)
    }
    /// The paper's DiT-XL shape.
    pub fn dit_xl() -> Self {
        Self::new(1152, 28, 16, 4608)
    }

    /// The names [`Self::preset`] knows.
    pub const PRESETS: [&'static str; 4] = ["tiny", "small", "dit-l", "dit-xl"];

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "small" => Some(Self::small()),
            "dit-l" => Some(Self::dit_l()),
            "dit-xl" => Some(Self::dit_xl()),
            _ => None,
        }
    }

    /// Checks a config read from an (untrusted) checkpoint describes a sane model.
    pub fn validate(&self) -> Result<(), String> {
        let trained = self.trained_budgets();
        let checks: [(bool, &str); 8] = [
            ((1..=8192).contains(&self.width), "width must be 1..=8192"),
            (
                self.heads > 0 && self.width.is_multiple_of(self.heads),
                "width must be a multiple of heads",
            ),
            // Attention memory grows with the head count at a given width: heads of one or
            // two channels would let a small file ask for many gigabytes.
            (
                self.heads > 0 && self.width / self.heads >= 8,
                "heads must be at least 8 channels wide",
            ),
            (
                self.depth <= 64 && (1..=65536).contains(&self.mlp_hidden),
                "at most 64 blocks; mlp_hidden 1..=65536",
            ),
            (
                (1..=256).contains(&self.token_dim) && (1..=4096).contains(&self.max_tokens),
                "token_dim/max_tokens out of range",
            ),
            (
                (2..=8192).contains(&self.time_features)
                    && self.time_features.is_multiple_of(2)
                    && (1..=8192).contains(&self.text_dim),
                "time_features must be even, 2..=8192; text_dim 1..=8192",
            ),
            (
                (self.latent_mean.len() == self.token_dim
                    || self.latent_mean.len() == self.max_tokens * self.token_dim)
                    && self.latent_std.len() == self.latent_mean.len()
                    && self.latent_std.iter().all(|s| s.is_finite() && *s > 0.0)
                    && self.latent_mean.iter().all(|m| m.is_finite()),
                "latent statistics must have token_dim or max_tokens x token_dim finite entries (std > 0)",
            ),
            (
                trained.start() <= trained.end() && *trained.end() <= self.max_tokens,
                "trained budgets must be an ordered range within max_tokens",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(()),
        }
    }

    /// Whether the latent statistics are per position (else per channel).
    pub fn per_position_statistics(&self) -> bool {
        self.latent_mean.len() != self.token_dim
    }

    /// Mean and standard deviation for the first `tokens` positions, `[1, tokens or 1, token_dim]`
    /// (broadcast over the batch, and over positions when the statistics are per channel).
    pub fn latent_statistics(&self, tokens: usize, device: &Device) -> (Tensor<3>, Tensor<3>) {
        let d = self.token_dim;
        let rows = if self.per_position_statistics() {
            tokens
        } else {
            1
        };
        let tensor = |values: &[f32]| {
            Tensor::<1>::from_data(
                TensorData::new(values[..rows * d].to_vec(), [rows * d]),
                device,
            )
            .reshape([1, rows, d])
        };
        (tensor(&self.latent_mean), tensor(&self.latent_std))
    }

    /// Whether the modulation also reads the pooled caption ([`Self::pooled_caption`]).
    pub fn has_pooled_caption(&self) -> bool {
        self.pooled_caption.unwrap_or(false)
    }

    /// The token budgets this DiT was trained to generate.
    pub fn trained_budgets(&self) -> RangeInclusive<usize> {
        self.trained_min_budget.unwrap_or(MIN_BUDGET)
            ..=self.trained_max_budget.unwrap_or(self.max_tokens)
    }

    /// Parameters in the weight matrices and embeddings this config builds (biases and norms
    /// left out); see `TexTokConfig::weight_parameters` for why loading checks it first.
    pub fn weight_parameters(&self) -> usize {
        let w = self.width;
        let pooled = if self.has_pooled_caption() {
            self.text_dim * w
        } else {
            0
        };
        // Self-attention 4, cross-attention query and output 2, adaLN modulation 6 (w x w).
        let block = 12 * w * w + 2 * self.text_dim * w + 2 * w * self.mlp_hidden;
        2 * self.token_dim * w
            + self.max_tokens * w
            + self.time_features * w
            + w * w
            + pooled
            + self.depth * block
            + 2 * w * w
    }

    pub fn init(&self, device: &Device) -> Dit {
        let w = self.width;
        let zero = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let norm = |affine: bool| {
            let config = LayerNormConfig::new(w).with_epsilon(1e-6);
            if affine {
                config.init(device)
            } else {
                config.with_bias(false).init(device)
            }
        };
        Dit {
            input: LinearConfig::new(self.token_dim, w).init(device),
            positions: Param::from_tensor(Tensor::random(
                [1, self.max_tokens, w],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            time_in: LinearConfig::new(self.time_features, w).init(device),
            time_out: LinearConfig::new(w, w).init(device),
            caption_in: self
                .has_pooled_caption()
                .then(|| LinearConfig::new(self.text_dim, w).init(device)),
            blocks: (0..self.depth)
                .map(|_| DitBlock {
                    norm1: norm(false),
                    attention: SelfAttentionConfig::new(w, self.heads).init(device),
                    norm_cross: norm(true),
                    cross_attention: CrossAttention::new(w, self.text_dim, self.heads, device),
                    norm2: norm(false),
                    mlp: Mlp::new(w, self.mlp_hidden, device),
                    modulation: zero(w, 6 * w),
                })
                .collect(),
            final_norm: norm(false),
            final_modulation: zero(w, 2 * w),
            output: zero(w, self.token_dim),
            time_features: self.time_features,
        }
    }
}

/// One DiT block with adaLN-Zero modulation (shift, scale, gate for attention and MLP).
#[derive(Module, Debug)]
pub struct DitBlock {
    pub norm1: LayerNorm,
    pub attention: SelfAttention,
    pub norm_cross: LayerNorm,
    pub cross_attention: CrossAttention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// Zero-initialised: every block starts as the identity.
    pub modulation: Linear,
}

#[derive(Module, Debug)]
pub struct Dit {
    pub input: Linear,
    pub positions: Param<Tensor<3>>,
    pub time_in: Linear,
    pub time_out: Linear,
    /// The pooled caption's projection into the modulation condition (`pooled_caption`).
    pub caption_in: Option<Linear>,
    pub blocks: Vec<DitBlock>,
    pub final_norm: LayerNorm,
    pub final_modulation: Linear,
    pub output: Linear,
    pub time_features: usize,
}

impl Dit {
    /// Loads a DiT checkpoint, validating its config and every tensor.
    pub fn load(
        path: &std::path::Path,
        device: &Device,
    ) -> Result<(Dit, DitConfig), CheckpointError> {
        Self::from_checkpoint(&CheckpointFile::read_kind(path, KIND_DIT)?, device)
    }

    /// [`Self::load`] from a checkpoint already read.
    pub fn from_checkpoint(
        file: &CheckpointFile,
        device: &Device,
    ) -> Result<(Dit, DitConfig), CheckpointError> {
        file.expect_kind(KIND_DIT)?;
        let config = file.validated_config("DiT", DitConfig::validate)?;
        file.expect_parameters_for_config(config.weight_parameters(), "DiT")?;
        let fresh = crate::device::init_module(device, None, || config.init(device));
        let dit = file.load_into(fresh)?;
        Ok((dit, config))
    }

    /// Starts the learned positions of the first `cells.len()` slots from a sinusoidal code of
    /// where the tokenizer puts them, `[centre_x, centre_y, level]` per slot (see
    /// `TexTok::slot_cells`); the other slots keep their random start. Random positions leave
    /// every slot unrelated to its neighbours, and a short CPU training produced mosaics of
    /// independently coloured patches; with the geometry, attending to nearby and covering
    /// cells is easy from the first step (as the 2-D sin-cos positions of image DiTs).
    pub fn with_position_geometry(mut self, cells: &[[f32; 3]]) -> Self {
        let device = self.positions.val().device();
        let [_, slots, width] = self.positions.dims();
        let mut values = self
            .positions
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("positions are f32 after convert");
        for (slot, cell) in cells.iter().take(slots).enumerate() {
            values[slot * width..(slot + 1) * width].copy_from_slice(&geometry_code(cell, width));
        }
        self.positions = Param::from_data(TensorData::new(values, [1, slots, width]), &device);
        self
    }

    /// Saves this DiT with `config` (atomically).
    pub fn save(
        &self,
        config: &DitConfig,
        path: &std::path::Path,
        precision: StoredPrecision,
    ) -> Result<(), CheckpointError> {
        save_module(self, path, KIND_DIT, config, precision)
    }
}

/// Sinusoidal code of a slot's place, `width` values: a third each for x, y and level (sin and
/// cos at geometric frequencies 1 .. 1/100), zeros in the remainder.
pub fn geometry_code(cell: &[f32; 3], width: usize) -> Vec<f32> {
    let third = width / 3 / 2 * 2;
    let pairs = third / 2;
    let mut code = vec![0.0f32; width];
    for (part, &value) in cell.iter().enumerate() {
        for i in 0..pairs {
            let frequency = 100f32.powf(-(i as f32) / pairs.max(1) as f32);
            code[part * third + 2 * i] = (value * frequency).sin();
            code[part * third + 2 * i + 1] = (value * frequency).cos();
        }
    }
    code
}

/// `x * (1 + scale) + shift` with `[batch, width]` modulations broadcast over the sequence.
fn modulate(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<3> {
    x * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

/// The mean of each caption's real token embeddings: `[batch, tokens, width]` -> `[batch, width]`.
fn mean_pooled(text: &TextEmbeddings) -> Tensor<2> {
    let [batch, _, width] = text.hidden.dims();
    let mask = text.mask.clone().unsqueeze_dim::<3>(2);
    let sum = (text.hidden.clone() * mask.clone()).sum_dim(1);
    let count = mask.sum_dim(1).clamp_min(1.0);
    (sum / count).reshape([batch, width])
}

/// Sinusoidal features of (fractional) timesteps: `[batch]` -> `[batch, dim]` (cos | sin).
pub fn timestep_features(timesteps: &[f32], dim: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let mut data = vec![0.0f32; timesteps.len() * dim];
    for (row, &t) in timesteps.iter().enumerate() {
        for i in 0..half {
            let frequency = (-(10_000f64.ln()) * i as f64 / half as f64).exp();
            let angle = t as f64 * frequency;
            data[row * dim + i] = angle.cos() as f32;
            data[row * dim + half + i] = angle.sin() as f32;
        }
    }
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), device)
}

impl Dit {
    /// - `x`: noisy tokens `[batch, k, token_dim]` (normalised), k <= max_tokens
    /// - `timesteps`: one per batch row (0..1000)
    /// - `text`: caption embeddings (batch rows match `x`)
    /// - returns the v prediction `[batch, k, token_dim]`
    pub fn forward(&self, x: Tensor<3>, timesteps: &[f32], text: &TextEmbeddings) -> Tensor<3> {
        let [_, k, _] = x.dims();
        let device = x.device();
        let mut h = self.input.forward(x) + self.positions.val().narrow(1, 0, k);
        let time = self
            .time_out
            .forward(silu(self.time_in.forward(timestep_features(
                timesteps,
                self.time_features,
                &device,
            ))));
        let condition = match &self.caption_in {
            Some(caption_in) => silu(time + caption_in.forward(mean_pooled(text))),
            None => silu(time),
        };
        let text_bias = (text.mask.clone().neg() + 1.0).mul_scalar(MASKED_KEY_BIAS);
        for block in &self.blocks {
            let m = block.modulation.forward(condition.clone()).chunk(6, 1);
            let attended = block.attention.forward(
                modulate(block.norm1.forward(h.clone()), m[0].clone(), m[1].clone()),
                None,
            );
            h = h + attended * m[2].clone().unsqueeze_dim::<3>(1);
            h = h.clone()
                + block.cross_attention.forward(
                    block.norm_cross.forward(h),
                    text.hidden.clone(),
                    text_bias.clone(),
                );
            let mlp = block.mlp.forward(modulate(
                block.norm2.forward(h.clone()),
                m[3].clone(),
                m[4].clone(),
            ));
            h = h + mlp * m[5].clone().unsqueeze_dim::<3>(1);
        }
        let f = self.final_modulation.forward(condition).chunk(2, 1);
        self.output.forward(modulate(
            self.final_norm.forward(h),
            f[0].clone(),
            f[1].clone(),
        ))
    }
}

/// What to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSettings {
    /// Token budget k.
    pub tokens: usize,
    /// DDIM steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1 = no guidance).
    pub cfg: f32,
    /// Image i of a batch uses seed `seed + i`, so each image can be regenerated alone.
    pub seed: u64,
    pub count: usize,
    /// Guide only at timesteps in `[lo, hi]` (Kynkäänniemi et al. 2024: guidance at high noise
    /// pulls every seed to one image, at low noise it does little); elsewhere the conditional
    /// prediction alone, without the unconditional pass. `None`: at every step.
    pub guidance_interval: Option<(usize, usize)>,
}

impl SampleSettings {
    /// The guidance scale at timestep `t`.
    pub fn cfg_at(&self, t: usize) -> f32 {
        match self.guidance_interval {
            Some((lo, hi)) if !(lo..=hi).contains(&t) => 1.0,
            _ => self.cfg,
        }
    }
}

/// Classifier-free guidance: `uncond + scale * (cond - uncond)`; exactly `cond` at scale 1 or
/// without an unconditional prediction.
pub fn guide(cond: Tensor<3>, uncond: Option<Tensor<3>>, scale: f32) -> Tensor<3> {
    match uncond {
        Some(uncond) if scale != 1.0 => uncond.clone() + (cond - uncond).mul_scalar(scale),
        _ => cond,
    }
}

/// Repeats a one-caption embedding `count` times along the batch.
fn repeat_text(text: &TextEmbeddings, count: usize) -> TextEmbeddings {
    TextEmbeddings {
        hidden: text.hidden.clone().repeat_dim(0, count),
        mask: text.mask.clone().repeat_dim(0, count),
        lengths: vec![text.lengths[0]; count],
    }
}

/// A DiT with its config (latent statistics) and noise schedule: what sampling needs.
pub struct Sampler<'a> {
    pub dit: &'a Dit,
    pub config: &'a DitConfig,
    pub schedule: &'a Schedule,
}

/// DDIM sampling with classifier-free guidance. `text` holds one caption (used for every image)
/// or `settings.count` captions (image i uses caption i); `null_text` holds the empty caption. Returns denormalised tokens
/// `[count, tokens, token_dim]`, ready for the TexTok detokenizer.
pub fn sample(
    sampler: &Sampler<'_>,
    text: &TextEmbeddings,
    null_text: &TextEmbeddings,
    settings: &SampleSettings,
    device: &Device,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<Tensor<3>, Cancelled> {
    let Sampler {
        config, schedule, ..
    } = *sampler;
    let (count, k, d) = (settings.count, settings.tokens, config.token_dim);
    let mut noise = Vec::with_capacity(count * k * d);
    for i in 0..count {
        noise.extend(seeded_noise(settings.seed.wrapping_add(i as u64), k * d));
    }
    let x = Tensor::<3>::from_data(TensorData::new(noise, [count, k, d]), device);
    let cond = if text.lengths.len() == count {
        text.clone()
    } else {
        repeat_text(text, count)
    };
    let uncond = repeat_text(null_text, count);
    let timesteps = schedule.ddim_timesteps(settings.steps);
    let x = denoise(
        sampler,
        x,
        &timesteps,
        &cond,
        &uncond,
        &|t| settings.cfg_at(t),
        progress,
        cancel,
    )?;
    let (mean, std) = config.latent_statistics(k, device);
    Ok(x * std + mean)
}

/// DDIM from `x` (normalised tokens at `timesteps[0]`) down the descending `timesteps`, with
/// guidance `cfg(t)` between `cond` and `uncond` (one caption per row of `x` each). Returns the
/// normalised tokens at t = 0.
#[allow(clippy::too_many_arguments)]
fn denoise(
    sampler: &Sampler<'_>,
    mut x: Tensor<3>,
    timesteps: &[usize],
    cond: &TextEmbeddings,
    uncond: &TextEmbeddings,
    cfg: &dyn Fn(usize) -> f32,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<Tensor<3>, Cancelled> {
    let Sampler { dit, schedule, .. } = *sampler;
    let count = x.dims()[0];
    for (i, &t) in timesteps.iter().enumerate() {
        cancel.check()?;
        let alpha_bar = schedule.alpha_bars[t];
        let alpha_bar_prev = timesteps
            .get(i + 1)
            .map_or(1.0, |&p| schedule.alpha_bars[p]);
        let ts = vec![t as f32; count];
        let scale = cfg(t);
        let v_cond = dit.forward(x.clone(), &ts, cond);
        // At scale 1 the unconditional pass cannot change the result: skip it.
        let v_uncond = (scale != 1.0).then(|| dit.forward(x.clone(), &ts, uncond));
        let v = guide(v_cond, v_uncond, scale);
        // DDIM is linear in (x_t, v): x_prev = a x_t + b v.
        let a = ddim_step(1.0, 0.0, alpha_bar, alpha_bar_prev);
        let b = ddim_step(0.0, 1.0, alpha_bar, alpha_bar_prev);
        x = x.mul_scalar(a) + v.mul_scalar(b);
        progress.report(Progress {
            done: i + 1,
            total: timesteps.len(),
            message: format!("step {}/{}", i + 1, timesteps.len()),
        });
    }
    Ok(x)
}

/// How [`regenerate`] brings tokens back: the DDIM grid and guidance of a sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regeneration {
    /// Noise the tokens to the last grid timestep at or below this one.
    pub start: usize,
    /// DDIM steps of the whole 1,000-step grid (10: every 100th timestep).
    pub grid_steps: usize,
    pub cfg: f32,
}

/// Partial regeneration (SDEdit, Meng et al. 2022): `tokens` `[batch, k, token_dim]` as the
/// tokenizer makes them are normalised, noised with `noise` (standard normal, same shape) to
/// the grid timestep at or below `how.start`, and DDIM-sampled back to t = 0 along the grid
/// with guidance, each row with its caption in `text`. Returns tokens `[batch, k, token_dim]`
/// as the sampler returns them: the image's layout with the generator's own errors, which is
/// what a detokenizer for generated tokens should learn to decode (Gaussian noise is only a
/// stand-in for them).
pub fn regenerate(
    sampler: &Sampler<'_>,
    tokens: Tensor<3>,
    noise: Tensor<3>,
    how: Regeneration,
    text: &TextEmbeddings,
    null_text: &TextEmbeddings,
    cancel: &CancelToken,
) -> Result<Tensor<3>, Cancelled> {
    let [count, k, _] = tokens.dims();
    let device = tokens.device();
    let (mean, std) = sampler.config.latent_statistics(k, &device);
    let timesteps: Vec<usize> = sampler
        .schedule
        .ddim_timesteps(how.grid_steps)
        .into_iter()
        .filter(|&t| t <= how.start)
        .collect();
    // The grid always ends at 0, so there is a first timestep.
    let alpha_bar = sampler.schedule.alpha_bars[timesteps[0]];
    let (signal, spread) = super::diffusion::coefficients(alpha_bar);
    let clean = (tokens - mean.clone()) / std.clone();
    let x = clean.mul_scalar(signal as f32) + noise.mul_scalar(spread as f32);
    let uncond = repeat_text(null_text, count);
    let x = denoise(
        sampler,
        x,
        &timesteps,
        text,
        &uncond,
        &|_| how.cfg,
        &crate::jobs::NoProgress,
        cancel,
    )?;
    Ok(x * std + mean)
}
