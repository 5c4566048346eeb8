use burn::tensor::Tensor;
use serde::Deserialize;
use textok_studio::model::text_encoder::{
    MAX_CAPTION_CHARS, MiniLmTextEncoder, TextEncoder, TextEncoderError,
};

use crate::common::*;

#[derive(Deserialize)]
struct Fixture {
    max_text_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    hidden: Vec<Vec<f32>>,
}

/// Reference hidden states come from an independent NumPy BERT (models/scripts/convert_minilm.py).
#[test]
fn matches_the_reference_implementation() {
    let fixture: Fixture = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/fixtures/minilm_reference.json")).unwrap(),
    )
    .unwrap();
    let encoder = MiniLmTextEncoder::load(
        &repo_path("models/text-encoder"),
        fixture.max_text_tokens,
        &cpu(),
    )
    .unwrap();
    assert_eq!(encoder.width(), 384);
    for case in &fixture.cases {
        let out = encoder.encode(&[&case.text]).unwrap();
        let n = case.ids.len();
        assert_eq!(out.lengths, vec![n], "token count for {:?}", case.text);
        assert_eq!(out.hidden.dims(), [1, n, 384]);
        let expected: Vec<f32> = case.hidden.iter().flatten().copied().collect();
        let expected =
            Tensor::<3>::from_data(burn::tensor::TensorData::new(expected, [1, n, 384]), &cpu());
        let error = max_abs_diff(out.hidden, expected);
        assert!(error <= 1e-3, "max abs error {error} for {:?}", case.text);
    }
}

#[test]
fn truncates_long_captions_and_counts_tokens() {
    let guard = text_encoder().lock().unwrap();
    let long = "word ".repeat(200);
    let count = guard.count_tokens(&long).unwrap();
    assert_eq!(count.needed, 202, "200 words plus [CLS] and [SEP]");
    assert_eq!(count.kept, 32);
    assert!(count.truncated());
    let short = guard.count_tokens("a dog").unwrap();
    assert_eq!((short.needed, short.kept, short.truncated()), (4, 4, false));
    let out = guard.encode(&[&long, "a dog"]).unwrap();
    assert_eq!(
        out.hidden.dims(),
        [2, 32, 384],
        "padded to the longest kept caption, not to 128"
    );
    assert_eq!(out.lengths, vec![32, 4]);
}

#[test]
fn empty_and_endless_captions_are_handled() {
    let guard = text_encoder().lock().unwrap();
    let empty = guard.encode(&[""]).unwrap();
    assert_eq!(empty.lengths, vec![2], "[CLS] [SEP]");
    // Far longer than anyone types: cut before tokenizing, so this returns promptly.
    let endless = "a".repeat(MAX_CAPTION_CHARS * 100);
    let out = guard.encode(&[&endless]).unwrap();
    assert!(out.lengths[0] <= 32);
    assert!(matches!(
        guard.encode(&[]),
        Err(TextEncoderError::EmptyBatch)
    ));
}

#[test]
fn bad_max_tokens_and_missing_files_are_errors() {
    let dir = repo_path("models/text-encoder");
    let err = MiniLmTextEncoder::load(&dir, 1, &cpu()).unwrap_err();
    assert!(err.to_string().contains("max_text_tokens"), "{err}");
    let err = MiniLmTextEncoder::load(&dir, 100_000, &cpu()).unwrap_err();
    assert!(err.to_string().contains("max_text_tokens"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = MiniLmTextEncoder::load(empty.path(), 32, &cpu()).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

/// Training encodes captions in padded batches, generation one at a time: a caption's real
/// tokens must get the same hidden states either way (padding is masked out of attention).
#[test]
fn a_caption_encodes_the_same_alone_and_in_a_padded_batch() {
    let encoder = text_encoder().lock().unwrap();
    let short = "red circle, an emoji";
    let long =
        "yellow circle, an emoji (symbols, geometric); circle, yellow, and a long tail of words";
    let batch = encoder.encode(&[short, long]).unwrap();
    let alone = encoder.encode(&[short]).unwrap();
    let n = alone.lengths[0];
    assert_eq!(batch.lengths[0], n);
    assert!(
        batch.lengths[1] > n,
        "the short caption is padded in the batch"
    );
    let in_batch = batch.hidden.clone().narrow(0, 0, 1).narrow(1, 0, n);
    let error = max_abs_diff(in_batch, alone.hidden.clone());
    assert!(error <= 1e-4, "max abs difference {error}");
}
