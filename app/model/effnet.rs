//! EfficientNet-Lite0 (ImageNet), frozen: perceptual-loss features for training and pooled
//! features for FD-EffNet (the Fréchet distance between feature sets; not FID, which uses
//! Inception).
//!
//! Weights: `models/efficientnet-lite0/model.safetensors`, converted by
//! `models/scripts/convert_efficientnet_lite0.py` with BatchNorm folded into each convolution.
//! The port follows TF-Lite: "SAME" padding (asymmetric at stride 2) and inputs scaled as
//! `(x * 255 - 127) / 128`. Checked on the sample assets: the penguin is classed "king penguin"
//! and the lizard as a lizard, top-1 (see the conversion script).

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Tensor};

use crate::checkpoint::{CheckpointError, CheckpointFile};

pub const KIND_EFFNET: &str = "efficientnet-lite0";
/// Width of the pooled features.
pub const FEATURE_DIM: usize = 1280;

#[derive(Config, Debug, PartialEq)]
pub struct EffNetConfig {
    /// (kernel, stride, expand ratio) per block.
    pub blocks: Vec<[usize; 3]>,
    #[config(default = 32)]
    pub stem_channels: usize,
    #[config(default = 1280)]
    pub head_channels: usize,
}

impl EffNetConfig {
    /// EfficientNet-Lite0: 16 inverted-residual blocks in 7 stages.
    pub fn lite0() -> Self {
        let stages = [
            (3, 1, 1, 1),
            (3, 2, 6, 2),
            (5, 2, 6, 2),
            (3, 2, 6, 3),
            (5, 1, 6, 3),
            (5, 2, 6, 4),
            (3, 1, 6, 1),
        ];
        let mut blocks = Vec::new();
        for (kernel, stride, expand, repeats) in stages {
            for r in 0..repeats {
                blocks.push([kernel, if r == 0 { stride } else { 1 }, expand]);
            }
        }
        Self::new(blocks)
    }

    /// Output channels of each block (Lite0's stage widths).
    fn block_channels(&self) -> Vec<usize> {
        let widths = [
            16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320,
        ];
        widths.iter().take(self.blocks.len()).copied().collect()
    }

    pub fn init(&self, device: &Device) -> EfficientNet {
        let conv = |i: usize, o: usize, k: usize, s: usize, groups: usize| {
            Conv2dConfig::new([i, o], [k, k])
                .with_stride([s, s])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Valid)
                .init(device)
        };
        let mut input = self.stem_channels;
        let mut blocks = Vec::new();
        for (&[kernel, stride, expand], output) in self.blocks.iter().zip(self.block_channels()) {
            let hidden = input * expand;
            blocks.push(MbConv {
                expand: (expand != 1).then(|| conv(input, hidden, 1, 1, 1)),
                depthwise: conv(hidden, hidden, kernel, stride, hidden),
                project: conv(hidden, output, 1, 1, 1),
                kernel,
                stride,
                residual: stride == 1 && input == output,
            });
            input = output;
        }
        EfficientNet {
            stem: conv(3, self.stem_channels, 3, 2, 1),
            blocks,
            head: conv(input, self.head_channels, 1, 1, 1),
        }
    }
}

/// Inverted residual block (no squeeze-excitation in the Lite variant), BN folded.
#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<Conv2d>,
    pub depthwise: Conv2d,
    pub project: Conv2d,
    pub kernel: usize,
    pub stride: usize,
    pub residual: bool,
}

#[derive(Module, Debug)]
pub struct EfficientNet {
    pub stem: Conv2d,
    pub blocks: Vec<MbConv>,
    pub head: Conv2d,
}

/// TF "SAME" padding of `x` `[batch, channels, H, W]` for a `kernel`/`stride` convolution.
fn same_pad(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let pads = |size: usize| {
        let out = size.div_ceil(stride);
        let total = ((out - 1) * stride + kernel).saturating_sub(size);
        (total / 2, total - total / 2)
    };
    let ((top, bottom), (left, right)) = (pads(h), pads(w));
    if top + bottom + left + right == 0 {
        return x;
    }
    x.pad((left, right, top, bottom), PadMode::Constant(0.0))
}

fn relu6(x: Tensor<4>) -> Tensor<4> {
    x.clamp(0.0, 6.0)
}

/// Blocks after which perceptual features are taken (end of stages 1, 2, 3, 4, 6).
pub const PERCEPTUAL_TAPS: [usize; 5] = [0, 2, 4, 7, 14];

impl EfficientNet {
    /// Loads the shipped weights (or any `efficientnet-lite0` checkpoint).
    pub fn load(path: &Path, device: &Device) -> Result<Self, CheckpointError> {
        let file = CheckpointFile::read_kind(path, KIND_EFFNET)?;
        let config: EffNetConfig = file.config("EfficientNet-Lite0")?;
        if config != EffNetConfig::lite0() {
            return Err(CheckpointError::BadConfig {
                path: path.to_owned(),
                expected: "EfficientNet-Lite0".into(),
                reason: "only the Lite0 block layout is supported".into(),
            });
        }
        let fresh = crate::device::init_module(device, None, || config.init(device));
        file.load_into(fresh)
    }

    /// - `images`: `[batch, 3, H, W]` in [-1, 1] (the tokenizers' range)
    /// - returns the activations after each block in `taps` and the final head output
    ///   `[batch, 1280, H/32, W/32]`
    pub fn features(&self, images: Tensor<4>, taps: &[usize]) -> (Vec<Tensor<4>>, Tensor<4>) {
        // [-1, 1] -> [0, 255] -> TF-Lite's (x - 127) / 128.
        let x = images.mul_scalar(127.5 / 128.0).add_scalar(0.5 / 128.0);
        let mut x = relu6(self.stem.forward(same_pad(x, 3, 2)));
        let mut tapped = Vec::with_capacity(taps.len());
        for (index, block) in self.blocks.iter().enumerate() {
            let input = x.clone();
            if let Some(expand) = &block.expand {
                x = relu6(expand.forward(x));
            }
            x = relu6(
                block
                    .depthwise
                    .forward(same_pad(x, block.kernel, block.stride)),
            );
            x = block.project.forward(x);
            if block.residual {
                x = x + input;
            }
            if taps.contains(&index) {
                tapped.push(x.clone());
            }
        }
        (tapped, relu6(self.head.forward(x)))
    }

    /// Global-average-pooled head features `[batch, 1280]` (FD-EffNet's features).
    pub fn pooled(&self, images: Tensor<4>) -> Tensor<2> {
        let (_, head) = self.features(images, &[]);
        let [batch, channels, _, _] = head.dims();
        head.mean_dim(3).mean_dim(2).reshape([batch, channels])
    }

    /// LPIPS-style distance: at each tap, unit-normalise features along channels and average the
    /// squared difference over positions and channels; summed over taps. Returns `[1]`.
    pub fn perceptual_distance(&self, a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
        let (fa, _) = self.features(a, &PERCEPTUAL_TAPS);
        let (fb, _) = self.features(b, &PERCEPTUAL_TAPS);
        let normalise = |f: Tensor<4>| {
            let norm = f.clone().powi_scalar(2).sum_dim(1).sqrt().add_scalar(1e-8);
            f / norm
        };
        fa.into_iter()
            .zip(fb)
            .map(|(x, y)| (normalise(x) - normalise(y)).powi_scalar(2).mean())
            .reduce(|a, b| a + b)
            .expect("at least one tap")
    }
}
