use burn::tensor::{Distribution, Tensor};
use textok_studio::jobs::{CancelToken, NoProgress};
use textok_studio::model::diffusion::{
    Schedule, ddim_step, noisy, seeded_noise, split_v, v_target,
};
use textok_studio::model::dit::{
    DitConfig, Regeneration, SampleSettings, Sampler, guide, regenerate, sample,
};

use crate::common::*;

#[test]
fn schedule_is_the_papers_linear_one() {
    let schedule = Schedule::default();
    assert_eq!(schedule.len(), 1000);
    assert!((schedule.betas[0] - 1e-4).abs() < 1e-15 && (schedule.betas[999] - 0.02).abs() < 1e-15);
    assert!((schedule.alpha_bars[0] - (1.0 - 1e-4)).abs() < 1e-15);
    assert!(schedule.alpha_bars.windows(2).all(|w| w[1] < w[0]));
    assert!(
        schedule.alpha_bars[999] < 1e-4,
        "almost pure noise at the end"
    );
    let ts = schedule.ddim_timesteps(50);
    assert_eq!(ts.len(), 50);
    assert_eq!((ts[0], ts[49]), (980, 0));
    assert!(ts.windows(2).all(|w| w[1] < w[0]));
    assert_eq!(
        schedule.ddim_timesteps(1000),
        (0..1000).rev().collect::<Vec<_>>()
    );
}

#[test]
fn v_prediction_algebra_round_trips() {
    for &(x0, eps, a) in &[
        (0.7, -1.3, 0.9),
        (-2.0, 0.5, 0.1),
        (0.0, 1.0, 0.5),
        (1.5, 1.5, 0.999),
    ] {
        let x_t = noisy(x0, eps, a);
        let v = v_target(x0, eps, a);
        let (x0_back, eps_back) = split_v(x_t, v, a);
        assert!((x0_back - x0).abs() < 1e-12 && (eps_back - eps).abs() < 1e-12);
        // |v|^2 + |x_t|^2 = |x0|^2 + |eps|^2 (a rotation).
        assert!((v * v + x_t * x_t - (x0 * x0 + eps * eps)).abs() < 1e-12);
    }
}

#[test]
fn ddim_step_matches_a_hand_computed_case() {
    // alpha_bar = 0.64 (sqrt 0.8, sqrt(1-a) 0.6), prev = 0.36 (0.6, 0.8); x_t = 1, v = 0.5.
    // x0 = 0.8*1 - 0.6*0.5 = 0.5; eps = 0.6*1 + 0.8*0.5 = 1.0; x_prev = 0.6*0.5 + 0.8*1.0 = 1.1.
    assert!((ddim_step(1.0, 0.5, 0.64, 0.36) - 1.1).abs() < 1e-12);
    // The last step (prev = 1) returns the predicted x0.
    assert!((ddim_step(1.0, 0.5, 0.64, 1.0) - 0.5).abs() < 1e-12);
}

#[test]
fn guidance_at_scale_one_is_the_conditional_prediction() {
    let device = cpu();
    let seeded = textok_studio::device::seeded(&device, 3);
    let cond = Tensor::<3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
    let uncond = Tensor::<3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
    drop(seeded);
    assert_eq!(
        max_abs_diff(guide(cond.clone(), Some(uncond.clone()), 1.0), cond.clone()),
        0.0
    );
    assert_eq!(
        max_abs_diff(
            guide(cond.clone(), Some(uncond.clone()), 0.0),
            uncond.clone()
        ),
        0.0
    );
    let expected = cond.clone().mul_scalar(3.0) - uncond.clone().mul_scalar(2.0);
    assert!(max_abs_diff(guide(cond, Some(uncond), 3.0), expected) < 1e-5);
}

#[test]
fn dit_starts_as_zero_and_has_the_right_shapes_at_every_budget() {
    let device = cpu();
    let config = DitConfig::tiny();
    let text = embed(&["a red apple", "a penguin on ice"]);
    // Held to the end: the loop below draws from burn's shared generator too.
    let dit = textok_studio::device::init_module(&device, Some(5), || config.init(&device));
    let _seeded = textok_studio::device::seeded(&device, 5);
    for k in [32, 64, 128, 256] {
        let x = Tensor::<3>::random([2, k, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = dit.forward(x, &[10.0, 900.0], &text);
        assert_eq!(v.dims(), [2, k, 8]);
        // adaLN-Zero: zero-initialised modulation and output layer.
        assert_eq!(v.abs().max().into_scalar::<f32>(), 0.0);
    }
}

#[test]
fn sampling_is_deterministic_under_a_seed() {
    let device = cpu();
    let config = DitConfig::tiny();
    let mut dit = textok_studio::device::init_module(&device, Some(6), || config.init(&device));
    let seeded = textok_studio::device::seeded(&device, 6);
    // Give the output layer weights so the sample depends on the network, not only the noise.
    dit.output.weight = burn::module::Param::from_tensor(Tensor::random(
        [32, 8],
        Distribution::Normal(0.0, 0.5),
        &device,
    ));
    drop(seeded);
    let text = embed(&["a blue bird"]);
    let null = embed(&[""]);
    let schedule = Schedule::default();
    let settings = SampleSettings {
        tokens: 32,
        steps: 5,
        cfg: 3.0,
        seed: 42,
        count: 2,
        guidance_interval: None,
    };
    let sampler = Sampler {
        dit: &dit,
        config: &config,
        schedule: &schedule,
    };
    let run = |s: &SampleSettings| {
        sample(
            &sampler,
            &text,
            &null,
            s,
            &device,
            &NoProgress,
            &CancelToken::new(),
        )
        .unwrap()
    };
    let a = run(&settings);
    assert_eq!(a.dims(), [2, 32, 8]);
    assert_eq!(
        max_abs_diff(a.clone(), run(&settings)),
        0.0,
        "same seed, same tokens"
    );
    let other = run(&SampleSettings {
        seed: 43,
        ..settings.clone()
    });
    assert!(max_abs_diff(a.clone(), other) > 1e-3);
    // Image i of a batch is image 0 of a batch seeded with seed + i.
    let second = run(&SampleSettings {
        seed: 43,
        count: 1,
        ..settings.clone()
    });
    assert!(max_abs_diff(a.clone().narrow(0, 1, 1), second) < 1e-5);
    // A guidance interval guides only the grid's timesteps inside it (5 steps: 800, 600, 400,
    // 200, 0): one holding all of them is plain guidance, one holding none is no guidance,
    // one holding some is neither.
    let guided_in = |interval| {
        run(&SampleSettings {
            guidance_interval: Some(interval),
            ..settings.clone()
        })
    };
    assert_eq!(max_abs_diff(a.clone(), guided_in((0, 999))), 0.0);
    let unguided = run(&SampleSettings {
        cfg: 1.0,
        ..settings.clone()
    });
    assert_eq!(max_abs_diff(unguided.clone(), guided_in((250, 350))), 0.0);
    let partly = guided_in((100, 500));
    assert!(max_abs_diff(partly.clone(), a.clone()) > 1e-4);
    assert!(max_abs_diff(partly, unguided) > 1e-4);
    let cancelled = CancelToken::new();
    cancelled.cancel();
    assert!(
        sample(
            &sampler,
            &text,
            &null,
            &settings,
            &device,
            &NoProgress,
            &cancelled
        )
        .is_err()
    );
    let noise = seeded_noise(7, 10_000);
    let mean = noise.iter().sum::<f32>() / 10_000.0;
    let var = noise.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 10_000.0;
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
        "standard normal: {mean} {var}"
    );
}

#[test]
fn per_position_statistics_denormalise_each_position() {
    let device = cpu();
    let mut config = DitConfig::tiny();
    let (positions, d) = (config.max_tokens, config.token_dim);
    assert!(config.validate().is_ok(), "per-channel statistics");
    // Per position and channel: a distinct mean for every entry and a spread so small that the
    // sample is the mean, whatever the network predicts.
    config.latent_mean = (0..positions * d).map(|i| i as f32 / 100.0).collect();
    config.latent_std = vec![1e-6; positions * d];
    assert!(config.validate().is_ok(), "per-position statistics");
    assert!(config.per_position_statistics());
    let dit = textok_studio::device::init_module(&device, Some(7), || config.init(&device));
    let schedule = Schedule::default();
    let sampler = Sampler {
        dit: &dit,
        config: &config,
        schedule: &schedule,
    };
    for tokens in [32, 48] {
        let settings = SampleSettings {
            tokens,
            steps: 2,
            cfg: 1.0,
            seed: 1,
            count: 2,
            guidance_interval: None,
        };
        let (text, null) = (embed(&["a green frog"]), embed(&[""]));
        let tokens_out = sample(
            &sampler,
            &text,
            &null,
            &settings,
            &device,
            &NoProgress,
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!(tokens_out.dims(), [2, tokens, d]);
        let expected = Tensor::<1>::from_floats(&config.latent_mean[..tokens * d], &device)
            .reshape([1, tokens, d])
            .repeat_dim(0, 2);
        assert!(max_abs_diff(tokens_out, expected) < 1e-3);
    }
    // Neither per channel nor per position: refused (a checkpoint from elsewhere).
    config.latent_mean.truncate(positions * d - 1);
    config.latent_std.truncate(positions * d - 1);
    assert!(config.validate().is_err());
    config.latent_std.truncate(d);
    config.latent_mean.truncate(d);
    config.latent_std[0] = 0.0;
    assert!(config.validate().is_err(), "a zero spread is refused");
}

#[test]
fn geometry_positions_follow_the_tokenizer_pyramid() {
    use textok_studio::model::dit::geometry_code;
    let device = cpu();
    // tiny: 32 px, patch 8 -> a 4x4 grid; pyramid without fill: 1 + 4 + 16 slots have cells.
    let (tokenizer, _) = tiny(true, 3);
    let cells = tokenizer.slot_cells();
    assert_eq!(cells.len(), 21);
    assert_eq!(cells[0], [2.0, 2.0, 0.0], "slot 0: the whole image");
    assert_eq!(
        cells[1..5],
        [
            [1.0, 1.0, 1.0],
            [3.0, 1.0, 1.0],
            [1.0, 3.0, 1.0],
            [3.0, 3.0, 1.0]
        ],
        "slots 1-4: the quarters, row-major"
    );
    assert_eq!(cells[5], [0.5, 0.5, 2.0]);
    assert_eq!(cells[20], [3.5, 3.5, 2.0]);

    let config = DitConfig::tiny();
    let width = config.width;
    let random = textok_studio::device::init_module(&device, Some(4), || config.init(&device));
    let before: Vec<f32> = random.positions.val().into_data().try_into_vec().unwrap();
    let dit = random.with_position_geometry(&cells);
    let after: Vec<f32> = dit.positions.val().into_data().try_into_vec().unwrap();
    assert_eq!(after.len(), config.max_tokens * width);
    for (slot, cell) in cells.iter().enumerate() {
        assert_eq!(
            after[slot * width..(slot + 1) * width],
            geometry_code(cell, width)
        );
    }
    assert_eq!(
        after[21 * width..],
        before[21 * width..],
        "slots without a cell keep their random start"
    );
    // Neighbouring cells of a level have more similar codes than distant ones.
    let dot = |a: usize, b: usize| -> f32 {
        (0..width)
            .map(|i| after[a * width + i] * after[b * width + i])
            .sum()
    };
    assert!(
        dot(5, 6) > dot(5, 8),
        "(0,0) is closer to (1,0) than to (3,0)"
    );
    assert!(dot(5, 6) > dot(5, 20));
    // A tokenizer without the pyramid has no geometry to offer.
    let (plain, _) = {
        let config = textok_studio::model::textok::TexTokConfig::tiny(true).with_pyramid(None);
        (config.init(&device), config)
    };
    assert!(plain.slot_cells().is_empty());
}

#[test]
fn pooled_caption_reaches_the_modulation_and_survives_a_checkpoint() {
    use textok_studio::checkpoint::StoredPrecision;
    use textok_studio::model::dit::Dit;
    let device = cpu();
    assert!(DitConfig::tiny().init(&device).caption_in.is_none());
    let config = DitConfig::tiny().with_pooled_caption(Some(true));
    let mut dit = textok_studio::device::init_module(&device, Some(8), || config.init(&device));
    let seeded = textok_studio::device::seeded(&device, 8);
    // adaLN-Zero starts every block as the identity; give the modulations and the output
    // weights so the condition shows in the prediction.
    let random = |shape: [usize; 2]| {
        burn::module::Param::from_tensor(Tensor::random(
            shape,
            Distribution::Normal(0.0, 0.2),
            &device,
        ))
    };
    for block in dit.blocks.iter_mut() {
        block.modulation.weight = random([32, 6 * 32]);
    }
    dit.final_modulation.weight = random([32, 2 * 32]);
    dit.output.weight = random([32, 8]);
    let x = Tensor::<3>::random([2, 32, 8], Distribution::Normal(0.0, 1.0), &device);
    drop(seeded);
    let text = embed(&["a red circle", "a yellow circle"]);
    let with_pooled = dit.forward(x.clone(), &[500.0, 500.0], &text);

    let mut without = dit.clone();
    without.caption_in = None;
    let cross_only = without.forward(x.clone(), &[500.0, 500.0], &text);
    assert!(
        max_abs_diff(with_pooled.clone(), cross_only) > 1e-3,
        "the pooled caption changes the prediction"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dit.safetensors");
    dit.save(&config, &path, StoredPrecision::F32).unwrap();
    let (loaded, loaded_config) = Dit::load(&path, &device).unwrap();
    assert!(loaded_config.has_pooled_caption() && loaded.caption_in.is_some());
    assert!(max_abs_diff(loaded.forward(x, &[500.0, 500.0], &text), with_pooled) < 1e-6);

    // Checkpoints from before the option have no such key: they load without the path.
    let (shipped, shipped_config) =
        Dit::load(&repo_path("models/dit-small.safetensors"), &device).unwrap();
    assert!(!shipped_config.has_pooled_caption() && shipped.caption_in.is_none());
}

#[test]
fn regeneration_noises_to_the_grid_point_below_its_start_and_denoises_from_there() {
    let device = cpu();
    let mut config = DitConfig::tiny();
    config.latent_mean = vec![0.5; 8];
    config.latent_std = vec![2.0; 8];
    // adaLN-Zero: a fresh DiT predicts v = 0, so each DDIM step scales x by a known factor.
    let dit = textok_studio::device::init_module(&device, Some(9), || config.init(&device));
    let schedule = Schedule::default();
    let sampler = Sampler {
        dit: &dit,
        config: &config,
        schedule: &schedule,
    };
    let text = embed(&["a red apple", "a penguin on ice"]);
    let null = embed(&[""]);
    let how = Regeneration {
        start: 250,
        grid_steps: 10,
        cfg: 3.0,
    };
    let run = |tokens: Tensor<3>, noise: Tensor<3>| {
        regenerate(
            &sampler,
            tokens,
            noise,
            how,
            &text,
            &null,
            &CancelToken::new(),
        )
        .unwrap()
    };
    // The 10-step grid is 900, 800, ..., 100, 0: a start of 250 noises to 200, then steps
    // 200 -> 100 -> 0 -> clean.
    let a = &schedule.alpha_bars;
    let chain = ddim_step(1.0, 0.0, a[200], a[100])
        * ddim_step(1.0, 0.0, a[100], a[0])
        * ddim_step(1.0, 0.0, a[0], 1.0);
    let tokens = Tensor::<3>::random([2, 32, 8], Distribution::Normal(0.0, 1.0), &device);
    let zeros = Tensor::<3>::zeros([2, 32, 8], &device);
    let out = run(tokens.clone(), zeros.clone());
    assert_eq!(out.dims(), [2, 32, 8]);
    let expected = (tokens.clone() - 0.5).mul_scalar((a[200].sqrt() * chain) as f32) + 0.5;
    assert!(max_abs_diff(out, expected) < 1e-4, "signal path");
    // The noise enters at the grid point's spread, in normalised units.
    let at_mean = Tensor::<3>::full([2, 32, 8], 0.5, &device);
    let ones = Tensor::<3>::ones([2, 32, 8], &device);
    let out = run(at_mean, ones);
    let expected = ((1.0 - a[200]).sqrt() * chain * 2.0 + 0.5) as f32;
    let error: f32 = (out - expected).abs().max().into_scalar();
    assert!(error < 1e-4, "noise path: off by {error}");
    // A start below the first step of the grid only cleans up: 0 -> clean.
    let shallow = regenerate(
        &sampler,
        tokens.clone(),
        zeros,
        Regeneration { start: 50, ..how },
        &text,
        &null,
        &CancelToken::new(),
    )
    .unwrap();
    let factor = a[0].sqrt() * ddim_step(1.0, 0.0, a[0], 1.0);
    let expected = (tokens.clone() - 0.5).mul_scalar(factor as f32) + 0.5;
    assert!(max_abs_diff(shallow, expected) < 1e-4, "start below 100");

    // With a DiT that predicts something, that one step is guided: each row with its own
    // caption against the null caption, at the sampler's scale.
    let mut dit = dit;
    {
        let _seeded = textok_studio::device::seeded(&device, 9);
        dit.output.weight = burn::module::Param::from_tensor(Tensor::random(
            [32, 8],
            Distribution::Normal(0.0, 0.5),
            &device,
        ));
    }
    let sampler = Sampler {
        dit: &dit,
        config: &config,
        schedule: &schedule,
    };
    let how = Regeneration { start: 50, ..how };
    let noise = Tensor::<3>::random([2, 32, 8], Distribution::Normal(0.0, 1.0), &device);
    let out = regenerate(
        &sampler,
        tokens.clone(),
        noise.clone(),
        how,
        &text,
        &null,
        &CancelToken::new(),
    )
    .unwrap();
    let (signal, spread) = (a[0].sqrt() as f32, (1.0 - a[0]).sqrt() as f32);
    let x = (tokens - 0.5).div_scalar(2.0).mul_scalar(signal) + noise.mul_scalar(spread);
    let v_own = dit.forward(x.clone(), &[0.0, 0.0], &text);
    let v_null = dit.forward(x.clone(), &[0.0, 0.0], &embed(&["", ""]));
    let v = guide(v_own, Some(v_null), 3.0);
    let stepped = x.mul_scalar(ddim_step(1.0, 0.0, a[0], 1.0) as f32)
        + v.mul_scalar(ddim_step(0.0, 1.0, a[0], 1.0) as f32);
    let expected = stepped.mul_scalar(2.0) + 0.5;
    let error = max_abs_diff(out.clone(), expected);
    assert!(error < 1e-4, "one guided step: off by {error}");
    let swapped = regenerate(
        &sampler,
        Tensor::<3>::zeros([2, 32, 8], &device) + 0.5,
        Tensor::<3>::zeros([2, 32, 8], &device),
        how,
        &embed(&["a penguin on ice", "a red apple"]),
        &null,
        &CancelToken::new(),
    )
    .unwrap();
    let own = regenerate(
        &sampler,
        Tensor::<3>::zeros([2, 32, 8], &device) + 0.5,
        Tensor::<3>::zeros([2, 32, 8], &device),
        how,
        &text,
        &null,
        &CancelToken::new(),
    )
    .unwrap();
    assert!(
        max_abs_diff(swapped, own) > 1e-4,
        "each row reads its own caption"
    );
}
