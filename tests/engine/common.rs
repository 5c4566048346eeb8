use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::{Device, Distribution, Tensor};
use textok_studio::model::text_encoder::{MiniLmTextEncoder, TextEmbeddings, TextEncoder};
use textok_studio::model::textok::{TexTok, TexTokConfig};

pub fn cpu() -> Device {
    Device::flex()
}

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The shipped text encoder, loaded once per test binary (it is frozen, so sharing is safe).
pub fn text_encoder() -> &'static std::sync::Mutex<MiniLmTextEncoder> {
    static ENCODER: OnceLock<std::sync::Mutex<MiniLmTextEncoder>> = OnceLock::new();
    ENCODER.get_or_init(|| {
        std::sync::Mutex::new(
            MiniLmTextEncoder::load(&repo_path("models/text-encoder"), 32, &cpu())
                .expect("shipped text encoder loads"),
        )
    })
}

pub fn embed(captions: &[&str]) -> TextEmbeddings {
    text_encoder()
        .lock()
        .unwrap()
        .encode(captions)
        .expect("captions encode")
}

/// A seeded tiny model: `text` = TexTok, else Baseline.
pub fn tiny(text: bool, seed: u64) -> (TexTok, TexTokConfig) {
    let device = cpu();
    let config = TexTokConfig::tiny(text);
    (
        textok_studio::device::init_module(&device, Some(seed), || config.init(&device)),
        config,
    )
}

/// A seeded random image batch in [-1, 1]: `[batch, 3, 32, 32]`.
pub fn random_images(batch: usize, seed: u64) -> Tensor<4> {
    let device = cpu();
    let _seeded = textok_studio::device::seeded(&device, seed);
    Tensor::random(
        [batch, 3, 32, 32],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    )
}

pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar()
}
