//! Engine integration tests (CPU `flex` backend unless a test says otherwise).

mod checkpoints;
mod cli;
mod common;
mod dataset;
mod diffusion;
mod effnet;
mod images;
mod jobs;
mod memory;
mod metrics;
mod text_encoder;
mod textok_model;
mod training;
mod wgpu_parity;
