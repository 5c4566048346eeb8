use image::{Rgb, Rgb32FImage};
use textok_studio::metrics::{format_psnr, psnr, ssim};

fn pattern(seed: u32) -> Rgb32FImage {
    Rgb32FImage::from_fn(48, 40, |x, y| {
        let v = ((x * 7 + y * 13 + seed * 31) % 97) as f32 / 96.0;
        Rgb([v, 1.0 - v, (v * 3.0) % 1.0])
    })
}

#[test]
fn identical_images_have_infinite_psnr_and_unit_ssim() {
    let a = pattern(1);
    assert!(psnr(&a, &a).is_infinite());
    assert_eq!(format_psnr(psnr(&a, &a)), "inf");
    assert!((ssim(&a, &a) - 1.0).abs() < 1e-9);
}

#[test]
fn psnr_matches_a_hand_computed_value() {
    // Every value off by 0.1: MSE = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB.
    let a = Rgb32FImage::from_pixel(16, 16, Rgb([0.5, 0.5, 0.5]));
    let b = Rgb32FImage::from_pixel(16, 16, Rgb([0.6, 0.4, 0.6]));
    assert!((psnr(&a, &b) - 20.0).abs() < 1e-4);
}

#[test]
fn ssim_drops_with_distortion_and_is_symmetric() {
    let a = pattern(1);
    let mut noisy = a.clone();
    for (i, v) in noisy.iter_mut().enumerate() {
        *v = (*v + if i % 2 == 0 { 0.2 } else { -0.2 }).clamp(0.0, 1.0);
    }
    let s = ssim(&a, &noisy);
    assert!(s < 0.9 && s > -1.0, "{s}");
    assert!((s - ssim(&noisy, &a)).abs() < 1e-12);
    // Constant images that differ only in brightness: the luminance term alone, computable by hand.
    let c1 = 0.01f64.powi(2);
    let (m1, m2) = (0.25f64, 0.75f64);
    let flat_a = Rgb32FImage::from_pixel(16, 16, Rgb([0.25; 3]));
    let flat_b = Rgb32FImage::from_pixel(16, 16, Rgb([0.75; 3]));
    let expected = (2.0 * m1 * m2 + c1) / (m1 * m1 + m2 * m2 + c1);
    assert!((ssim(&flat_a, &flat_b) - expected).abs() < 1e-4);
}

#[test]
fn gen_eval_takes_the_first_captions_or_spreads_them_through_the_split() {
    use textok_studio::metrics::evaluation::caption_indices;
    assert_eq!(caption_indices(5, 3, false), [0, 1, 2]);
    assert_eq!(
        caption_indices(3, 7, false),
        [0, 1, 2, 0, 1, 2, 0],
        "repeats"
    );
    assert_eq!(caption_indices(10, 4, true), [0, 2, 5, 7], "evenly spaced");
    assert_eq!(caption_indices(519, 500, true).len(), 500);
    let spread = caption_indices(519, 16, true);
    assert!(spread.windows(2).all(|w| w[1] > w[0]) && spread[15] >= 480);
    assert_eq!(
        caption_indices(3, 5, true),
        caption_indices(3, 5, false),
        "more images than captions: repeat as without --spread"
    );
    assert!(caption_indices(0, 4, true).is_empty());
}

#[test]
fn caption_match_counts_generations_nearest_to_their_own_reference() {
    use textok_studio::metrics::evaluation::{caption_groups, caption_match_rate};
    // Four different captions.
    let groups = caption_groups(&["a", "b", "c", "d"]);
    let caption_match_rate =
        |generated: &[Vec<f32>], references: &[Vec<f32>], truth: &[usize], k| {
            caption_match_rate(generated, references, truth, &groups, k)
        };
    let references = vec![
        vec![0.0, 0.0],
        vec![10.0, 0.0],
        vec![0.0, 10.0],
        vec![10.0, 10.0],
    ];
    // Each generation sits next to its own reference: all match, even at k = 1.
    let near_own = vec![vec![1.0, 0.5], vec![9.0, 0.0], vec![0.0, 9.5]];
    assert_eq!(
        caption_match_rate(&near_own, &references, &[0, 1, 2], 1),
        1.0
    );
    // The same images credited to other captions: none is nearest to its "own" one...
    assert_eq!(
        caption_match_rate(&near_own, &references, &[3, 0, 1], 1),
        0.0
    );
    // ...with k = 2 the second image's (its "own" is its second-nearest) counts; with k = 4
    // (every reference) all do.
    let rate = caption_match_rate(&near_own, &references, &[3, 0, 1], 2);
    assert!((rate - 1.0 / 3.0).abs() < 1e-12, "{rate}");
    assert_eq!(
        caption_match_rate(&near_own, &references, &[3, 0, 1], 4),
        1.0
    );
    // A tie with another reference counts against (a constant image matches nothing).
    let middle = vec![vec![5.0, 0.0]];
    assert_eq!(caption_match_rate(&middle, &references, &[0], 1), 0.0);
    assert_eq!(caption_match_rate(&middle, &references, &[0], 2), 1.0);
    assert_eq!(
        caption_match_rate(&middle, &references, &[9], 1),
        0.0,
        "no such reference"
    );
    // References 0 and 3 share a caption: an image near either matches it at k = 1 (it was
    // one target drawn twice, not one arbitrary drawing of the two).
    let shared = caption_groups(&["star", "b", "c", " star "]);
    let near_three = vec![vec![9.5, 9.5]];
    assert_eq!(
        textok_studio::metrics::evaluation::caption_match_rate(
            &near_three,
            &references,
            &[0],
            &shared,
            1
        ),
        1.0
    );
}

#[test]
fn nearest_other_caption_is_the_most_similar_other_row() {
    use textok_studio::metrics::evaluation::nearest_other;
    let rows = vec![
        vec![1.0, 0.0, 0.0],
        vec![0.9, 0.1, 0.0],
        vec![0.0, 0.0, 1.0],
        // Same direction as row 2 but longer: cosine, not distance, decides.
        vec![0.0, 0.2, 5.0],
    ];
    let distinct = ["a", "b", "c", "d"];
    assert_eq!(nearest_other(&rows, &distinct), [1, 0, 3, 2]);
    // Ties go to the lower index; a row is never its own neighbour.
    let same = vec![vec![1.0, 1.0]; 3];
    assert_eq!(nearest_other(&same, &["a", "b", "c"]), [1, 0, 0]);
    assert_eq!(nearest_other(&[vec![1.0]], &["a"]), [0]);
    // Nor is another row of the same caption (the same text given again measures nothing):
    // rows 0 and 1 share one, so each one's nearest other caption is further away.
    let shared = ["star", "star ", "c", "d"];
    assert_eq!(nearest_other(&rows, &shared), [2, 3, 3, 2]);
}

#[test]
fn specificity_is_the_share_of_the_caption_benefit_a_similar_caption_loses() {
    use textok_studio::metrics::evaluation::CaptionContrast;
    let contrast = |own: f64, nearest: f64, null: f64| CaptionContrast {
        timesteps: vec![500, 900],
        own: vec![own, own],
        nearest: vec![nearest, nearest],
        null: vec![null, null],
    };
    assert_eq!(
        contrast(0.5, 0.5, 1.0).specificity(),
        Some(0.0),
        "kind only"
    );
    assert_eq!(contrast(0.5, 1.0, 1.0).specificity(), Some(1.0));
    assert_eq!(contrast(0.5, 0.75, 1.0).specificity(), Some(0.5));
    assert_eq!(contrast(0.5, 0.6, 0.5).specificity(), None, "no benefit");
}
