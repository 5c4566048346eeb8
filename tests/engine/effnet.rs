use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;
use textok_studio::metrics::fd::frechet_distance;
use textok_studio::model::effnet::{EfficientNet, FEATURE_DIM};

use crate::common::*;

#[derive(Deserialize)]
struct Fixture {
    size: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    /// [3, size, size] in [0, 1]
    image: Vec<f32>,
    features: Vec<f32>,
}

fn effnet() -> EfficientNet {
    EfficientNet::load(
        &repo_path("models/efficientnet-lite0/model.safetensors"),
        &cpu(),
    )
    .unwrap()
}

/// Reference features come from an independent NumPy implementation
/// (models/scripts/convert_efficientnet_lite0.py).
#[test]
fn pooled_features_match_the_reference_implementation() {
    let fixture: Fixture = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/fixtures/effnet_reference.json")).unwrap(),
    )
    .unwrap();
    let net = effnet();
    for case in &fixture.cases {
        let pixels: Vec<f32> = case.image.iter().map(|v| v * 2.0 - 1.0).collect();
        let input = Tensor::<4>::from_data(
            TensorData::new(pixels, [1, 3, fixture.size, fixture.size]),
            &cpu(),
        );
        let features = net.pooled(input);
        assert_eq!(features.dims(), [1, FEATURE_DIM]);
        let expected = Tensor::<2>::from_data(
            TensorData::new(case.features.clone(), [1, FEATURE_DIM]),
            &cpu(),
        );
        let error = max_abs_diff(features, expected);
        assert!(error <= 1e-3, "{}: max abs error {error}", case.name);
    }
}

#[test]
fn perceptual_distance_is_zero_for_equal_images_and_grows_with_change() {
    let net = effnet();
    let a = random_images(2, 41);
    let same: f32 = net.perceptual_distance(a.clone(), a.clone()).into_scalar();
    assert!(same.abs() < 1e-6, "{same}");
    let slightly = a.clone() + random_images(2, 42).mul_scalar(0.05);
    let very = random_images(2, 43);
    let small: f32 = net.perceptual_distance(a.clone(), slightly).into_scalar();
    let large: f32 = net.perceptual_distance(a, very).into_scalar();
    assert!(0.0 < small && small < large, "{small} {large}");
}

#[test]
fn frechet_distance_on_known_sets() {
    let mut state = 1u64;
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let set: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..6).map(|_| noise()).collect())
        .collect();
    assert!(frechet_distance(&set, &set) < 1e-6, "a set against itself");
    // Shifting every sample by v leaves the covariance and moves the mean: FD = |v|^2.
    let shifted: Vec<Vec<f32>> = set
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(j, x)| x + if j == 0 { 3.0 } else { 0.0 })
                .collect()
        })
        .collect();
    assert!((frechet_distance(&set, &shifted) - 9.0).abs() < 1e-3);
    // Scaling by 2 (zero-ish mean): FD = Tr(S) + Tr(4S) - 2 Tr(2S) = Tr(S) + |mean shift|^2.
    let scaled: Vec<Vec<f32>> = set
        .iter()
        .map(|row| row.iter().map(|x| 2.0 * x).collect())
        .collect();
    let fd = frechet_distance(&set, &scaled);
    let (mean, cov) = textok_studio::metrics::fd::mean_and_covariance(&set);
    let expected = cov.trace() + mean.norm_squared();
    assert!(
        (fd - expected).abs() < 1e-6 * expected.max(1.0),
        "{fd} vs {expected}"
    );
    assert!(
        (frechet_distance(&scaled, &set) - fd).abs() < 1e-6,
        "symmetric"
    );
}

#[test]
fn few_samples_in_high_dimension_use_the_same_formula() {
    // 3 samples of width 2 (the covariance path) against the same data padded to width 1280 with
    // constant columns (which add nothing to either covariance): equal FDs, both positive.
    let a: Vec<Vec<f32>> = (0..3)
        .map(|i| {
            (0..2)
                .map(|j| ((i * 7 + j * 13) % 17) as f32 / 17.0)
                .collect()
        })
        .collect();
    let b: Vec<Vec<f32>> = (0..3)
        .map(|i| {
            (0..2)
                .map(|j| ((i * 5 + j * 11) % 19) as f32 / 19.0 + 0.3)
                .collect()
        })
        .collect();
    let small = frechet_distance(&a, &b);
    let pad = |rows: &[Vec<f32>]| {
        rows.iter()
            .map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0.5, 1278))
                    .collect()
            })
            .collect::<Vec<Vec<f32>>>()
    };
    let wide = frechet_distance(&pad(&a), &pad(&b));
    assert!(
        small > 0.1 && (small - wide).abs() < 1e-6,
        "{small} vs {wide}"
    );
}
