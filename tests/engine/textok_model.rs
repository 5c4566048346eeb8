use burn::tensor::{Distribution, Tensor};
use textok_studio::model::textok::TexTokConfig;

use crate::common::*;

#[test]
fn shapes_at_every_budget() {
    let (model, config) = tiny(true, 1);
    let images = random_images(2, 2);
    let text = embed(&["a red square", "a blue circle on a white background"]);
    let tokens = model.encode(images.clone(), Some(&text));
    assert_eq!(tokens.dims(), [2, config.max_tokens, config.token_dim]);
    for budget in [32, 64, 100, 128, 256] {
        let out = model.decode(tokens.clone().narrow(1, 0, budget), Some(&text));
        assert_eq!(out.dims(), [2, 3, 32, 32], "budget {budget}");
    }
    assert_eq!(
        model.reconstruct(images, Some(&text), 64).dims(),
        [2, 3, 32, 32]
    );
}

#[test]
fn presets_have_the_documented_shapes() {
    let small = TexTokConfig::small(true);
    assert_eq!(
        (
            small.image_size,
            small.patch_size,
            small.max_tokens,
            small.token_dim
        ),
        (128, 16, 256, 8)
    );
    assert_eq!(small.pyramid, Some(true));
    assert_eq!(small.pyramid_fill, Some(true));
    assert_eq!(TexTokConfig::base(true).pyramid, None);
    let base = TexTokConfig::base(false);
    assert_eq!(
        (
            base.image_size,
            base.width,
            base.encoder_layers,
            base.heads,
            base.mlp_hidden
        ),
        (256, 768, 12, 12, 3072)
    );
    assert!(!base.text_conditioning);
    for name in TexTokConfig::PRESETS {
        TexTokConfig::preset(name, true)
            .unwrap()
            .validate()
            .unwrap();
    }
    assert!(TexTokConfig::preset("huge", true).is_none());
}

#[test]
fn tokens_after_the_budget_cannot_influence_the_output() {
    let (model, config) = tiny(true, 3);
    let text = embed(&["a small house"]);
    let tokens = model.encode(random_images(1, 4), Some(&text));
    let budget = 48;
    let device = cpu();
    let seeded = textok_studio::device::seeded(&device, 5);
    let noise = Tensor::<3>::random(
        [1, config.max_tokens - budget, config.token_dim],
        Distribution::Normal(0.0, 10.0),
        &device,
    );
    drop(seeded);
    let changed_tail = Tensor::cat(vec![tokens.clone().narrow(1, 0, budget), noise], 1);
    assert!(
        max_abs_diff(changed_tail.clone(), tokens.clone()) > 1.0,
        "the tail really changed"
    );
    // The detokenizer is handed the first `budget` tokens of each sequence: equal outputs.
    let out = model.decode(tokens.clone().narrow(1, 0, budget), Some(&text));
    let out_changed = model.decode(changed_tail.narrow(1, 0, budget), Some(&text));
    assert_eq!(max_abs_diff(out.clone(), out_changed), 0.0);
    // ...while a token inside the prefix does change the output, so the check above can fail.
    let bumped = tokens.clone().narrow(1, 0, budget).slice_assign(
        [0..1, budget - 1..budget, 0..config.token_dim],
        Tensor::ones([1, 1, config.token_dim], &device).mul_scalar(5.0),
    );
    let out_bumped = model.decode(bumped, Some(&text));
    assert!(max_abs_diff(out, out_bumped) > 1e-4);
}

#[test]
fn baseline_ignores_the_caption_and_textok_does_not() {
    let images = random_images(1, 6);
    let a = embed(&["a cat sleeping on a sofa"]);
    let b = embed(&["a rocket launching into a dark starry sky above the sea"]);

    let (baseline, _) = tiny(false, 7);
    assert!(!baseline.is_text_conditioned());
    let base_a = baseline.reconstruct(images.clone(), Some(&a), 64);
    let base_b = baseline.reconstruct(images.clone(), Some(&b), 64);
    assert_eq!(max_abs_diff(base_a, base_b), 0.0);

    let (textok, _) = tiny(true, 7);
    assert!(textok.is_text_conditioned());
    let tok_a = textok.reconstruct(images.clone(), Some(&a), 64);
    let tok_b = textok.reconstruct(images, Some(&b), 64);
    assert!(
        max_abs_diff(tok_a, tok_b) > 1e-5,
        "TexTok's output must depend on the caption"
    );
}

#[test]
fn caption_padding_does_not_change_the_result() {
    // Batched with a longer caption, the short caption is padded; the mask must hide the padding.
    let (model, _) = tiny(true, 8);
    let images = random_images(1, 9);
    let alone = embed(&["a tree"]);
    let padded = embed(&[
        "a tree",
        "a tall green tree standing alone in a wide field of golden wheat",
    ]);
    assert!(padded.hidden.dims()[1] > alone.hidden.dims()[1]);
    let first = textok_studio::model::text_encoder::TextEmbeddings {
        hidden: padded.hidden.narrow(0, 0, 1),
        mask: padded.mask.narrow(0, 0, 1),
        lengths: vec![padded.lengths[0]],
    };
    let out_alone = model.reconstruct(images.clone(), Some(&alone), 32);
    let out_padded = model.reconstruct(images, Some(&first), 32);
    assert!(max_abs_diff(out_alone, out_padded) < 1e-4);
}

/// Two images with the same mean colour that differ only in where things are: black left half
/// and white right half, and its mirror image. `[2, 3, 32, 32]`.
fn mirrored_halves() -> Tensor<4> {
    let device = cpu();
    let row: Vec<f32> = (0..32).map(|x| if x < 16 { -1.0 } else { 1.0 }).collect();
    let mirrored: Vec<f32> = row.iter().rev().copied().collect();
    let mut values = Vec::new();
    for half in [&row, &mirrored] {
        for _ in 0..3 * 32 {
            values.extend_from_slice(half);
        }
    }
    Tensor::<1>::from_floats(values.as_slice(), &device).reshape([2, 3, 32, 32])
}

/// ||a - b|| / ||a|| over the first `count` tokens of the two images' encodings.
fn relative_token_difference(config: TexTokConfig, count: usize) -> f32 {
    let device = cpu();
    let model = textok_studio::device::init_module(&device, Some(7), || config.init(&device));
    let tokens = model.encode(mirrored_halves(), None).narrow(1, 0, count);
    let a = tokens.clone().narrow(0, 0, 1);
    let b = tokens.narrow(0, 1, 1);
    let difference: f32 = (a.clone() - b).powi_scalar(2).sum().sqrt().into_scalar();
    let size: f32 = a.powi_scalar(2).sum().sqrt().into_scalar();
    difference / size
}

#[test]
fn pyramid_latents_see_where_things_are_from_the_start() {
    // Plain learned queries attend almost uniformly at init, so mirrored images (same mean
    // colour) give nearly the same tokens; the pooled pyramid's quarter tokens tell them apart.
    let plain = relative_token_difference(TexTokConfig::tiny(false).with_pyramid(None), 32);
    let pyramid = relative_token_difference(TexTokConfig::tiny(false), 32);
    assert!(
        pyramid > 0.2 && pyramid > 3.0 * plain,
        "pyramid {pyramid} vs plain {plain}"
    );
}

/// Mean absolute change of the top-left and bottom-right `side` x `side` pixels of a tiny
/// model's 32x32 output when token `slot` (of 32) is bumped.
fn corner_changes(config: TexTokConfig, slot: usize, side: usize) -> (f32, f32) {
    let device = cpu();
    let model = textok_studio::device::init_module(&device, Some(9), || config.init(&device));
    let tokens = Tensor::<3>::random([1, 32, 8], Distribution::Normal(0.0, 1.0), &device);
    let bump = Tensor::<3>::zeros([1, 32, 8], &device).slice_assign(
        [0..1, slot..slot + 1, 0..8],
        Tensor::<3>::full([1, 1, 8], 3.0, &device),
    );
    let change = (model.decode(tokens.clone() + bump, None) - model.decode(tokens, None)).abs();
    let far = 32 - side;
    let top_left: f32 = change
        .clone()
        .slice([0..1, 0..3, 0..side, 0..side])
        .mean()
        .into_scalar();
    let bottom_right: f32 = change
        .slice([0..1, 0..3, far..32, far..32])
        .mean()
        .into_scalar();
    (top_left, bottom_right)
}

#[test]
fn pyramid_decoder_sends_a_quarter_token_to_its_quarter() {
    // Slot 1 is the top-left quarter's token: changing it must change the top-left of the
    // output far more than the bottom-right (there only attention, near uniform at init, carries it).
    let (top_left, bottom_right) = corner_changes(TexTokConfig::tiny(false), 1, 16);
    assert!(
        top_left > 3.0 * bottom_right,
        "top-left {top_left} vs bottom-right {bottom_right}"
    );
}

#[test]
fn pyramid_fill_gives_the_slots_after_the_pyramid_a_cell() {
    // Tiny: a 4x4 grid, so the pyramid has 1 + 4 + 16 = 21 slots; with the fill, slot 21
    // starts a second 4x4 level and belongs to the top-left cell.
    let (top_left, bottom_right) = corner_changes(
        TexTokConfig::tiny(false).with_pyramid_fill(Some(true)),
        21,
        8,
    );
    assert!(
        top_left > 3.0 * bottom_right,
        "top-left {top_left} vs bottom-right {bottom_right}"
    );
    // Without it, slot 21 reaches the image through attention alone: no corner stands out.
    let (top_left, bottom_right) = corner_changes(TexTokConfig::tiny(false), 21, 8);
    assert!(
        top_left < 2.0 * bottom_right,
        "top-left {top_left} vs bottom-right {bottom_right}"
    );
}

#[test]
fn configs_saved_before_the_pyramid_load_with_plain_queries() {
    let mut json: serde_json::Value = serde_json::to_value(TexTokConfig::tiny(true)).unwrap();
    json.as_object_mut().unwrap().remove("pyramid");
    json.as_object_mut().unwrap().remove("pyramid_fill");
    let config: TexTokConfig = serde_json::from_value(json).unwrap();
    assert_eq!(config.pyramid, None);
    let device = cpu();
    assert!(!config.init(&device).pyramid);
}
