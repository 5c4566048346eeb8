//! Where the shipped models live.

use std::path::PathBuf;

/// The folder with the shipped models: `$TEXTOK_MODELS_DIR` if set, else `models/` next to the
/// executable's install prefix, else the source checkout this binary was built from.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEXTOK_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        // <prefix>/bin/textok-studio -> <prefix>/models, or <repo>/target/<profile>/textok-studio
        // -> <repo>/models (cargo run).
        for ancestor in exe.ancestors().skip(1).take(3) {
            let candidate = ancestor.join("models");
            if candidate.join("text-encoder").is_dir() {
                return candidate;
            }
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub fn text_encoder_dir() -> PathBuf {
    models_dir().join("text-encoder")
}

/// The shipped TexTok tokenizer checkpoint (trained by the training pipeline).
pub fn default_textok_checkpoint() -> PathBuf {
    models_dir().join("textok-small.safetensors")
}

/// The shipped TexTok detokenizer for generation: the same encoder as
/// [`default_textok_checkpoint`] (so the same tokens), its detokenizer trained further on
/// perturbed tokens, as the DiT's samples are, rather than on the encoder's exact ones. It makes
/// better images from generated tokens and slightly blurrier reconstructions, so `generate` and
/// the Generate pane decode with it and Compare with the other.
pub fn default_generation_decoder() -> PathBuf {
    models_dir().join("textok-small-generate.safetensors")
}

/// The shipped Baseline (no text) tokenizer checkpoint.
pub fn default_baseline_checkpoint() -> PathBuf {
    models_dir().join("baseline-small.safetensors")
}

/// The converted EfficientNet-Lite0 weights (perceptual loss, FD-EffNet).
pub fn effnet_checkpoint() -> PathBuf {
    models_dir()
        .join("efficientnet-lite0")
        .join("model.safetensors")
}

/// The shipped text-to-image DiT over the shipped TexTok's tokens.
pub fn default_dit_checkpoint() -> PathBuf {
    models_dir().join("dit-small.safetensors")
}
