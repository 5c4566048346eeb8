//! Getting pictures in and out: decoding with limits, preprocessing to the model's resolution,
//! tensor conversion, and PNG output.

pub mod dataset;
pub mod image;
