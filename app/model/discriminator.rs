//! A small PatchGAN discriminator for the tokenizer's adversarial loss: four convolutions
//! (4x4 stride 2 three times, then 3x3) with leaky ReLU, one logit per patch.

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};

#[derive(Config, Debug, PartialEq)]
pub struct DiscriminatorConfig {
    /// Channels of the first convolution (doubled twice).
    #[config(default = 32)]
    pub channels: usize,
}

impl DiscriminatorConfig {
    pub fn init(&self, device: &Device) -> Discriminator {
        let c = self.channels;
        let conv = |i: usize, o: usize, k: usize, s: usize| {
            Conv2dConfig::new([i, o], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Discriminator {
            layers: vec![
                conv(3, c, 4, 2),
                conv(c, 2 * c, 4, 2),
                conv(2 * c, 4 * c, 4, 2),
            ],
            head: conv(4 * c, 1, 3, 1),
        }
    }
}

#[derive(Module, Debug)]
pub struct Discriminator {
    pub layers: Vec<Conv2d>,
    pub head: Conv2d,
}

impl Discriminator {
    /// `[batch, 3, H, W]` in [-1, 1] -> patch logits `[batch, 1, H/8, W/8]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        let mut x = images;
        for layer in &self.layers {
            x = leaky_relu(layer.forward(x), 0.2);
        }
        self.head.forward(x)
    }

    /// Logits summed over patches: `[batch]`, the per-image score used for R1.
    pub fn score(&self, images: Tensor<4>) -> Tensor<1> {
        let logits = self.forward(images);
        let [batch, _, _, _] = logits.dims();
        logits
            .reshape([batch as i32, -1])
            .sum_dim(1)
            .reshape([batch])
    }
}
