//! TexTok Studio: language-guided image tokenization (TexTok, arXiv 2412.05796) on your own machine.
//!
//! The engine (models, checkpoints, data, metrics, pipeline) lives here and never depends on a GUI;
//! the command line in `cli` and the desktop app in `gui` call the same `pipeline` functions.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod files;
pub mod gui;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod paths;
pub mod pipeline;
pub mod train;
