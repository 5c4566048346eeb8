//! Engine integration tests (CPU `flex` backend unless a test says otherwise).

mod checkpoints;
mod cli;
mod common;
mod images;
mod metrics;
mod text_encoder;
mod textok_model;
mod wgpu_parity;
