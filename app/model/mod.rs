//! The models: the frozen text encoder, the TexTok tokenizer/detokenizer (and its Baseline
//! without text), built from the shared transformer layers.

pub mod diffusion;
pub mod discriminator;
pub mod dit;
pub mod effnet;
pub mod layers;
pub mod text_encoder;
pub mod textok;
