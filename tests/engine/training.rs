use std::path::Path;
use std::sync::Mutex;

use image::{Rgba, RgbaImage};
use textok_studio::checkpoint::{CheckpointFile, module_to_host};
use textok_studio::jobs::CancelToken;
use textok_studio::model::textok::TexTok;
use textok_studio::train::tokenizer::{
    StateExtras, StepReport, TokenizerTrainConfig, TrainObserver, TrainingModels, TrainingState,
    load_state, new_optimizer, save_state, train_tokenizer,
};
use textok_studio::train::{SplitMix64, learning_rate, resolve_run_config};

use crate::common::*;

#[derive(Default)]
struct Losses(Mutex<Vec<f64>>);

impl TrainObserver for Losses {
    fn on_step(&self, report: &StepReport) {
        self.0.lock().unwrap().push(report.loss);
    }
}

fn models() -> TrainingModels {
    TrainingModels {
        text_encoder_dir: repo_path("models/text-encoder"),
        effnet: repo_path("models/efficientnet-lite0/model.safetensors"),
    }
}

/// Pulls the plug (cancels) when the given step is reported.
struct StopAt(usize, CancelToken);

impl TrainObserver for StopAt {
    fn on_step(&self, report: &StepReport) {
        if report.step == self.0 {
            self.1.cancel();
        }
    }
}

/// Trains (or resumes) quietly with the shipped frozen networks.
fn train(
    run: &Path,
    config: &TokenizerTrainConfig,
    resume: bool,
) -> anyhow::Result<textok_studio::train::tokenizer::TrainOutcome> {
    train_tokenizer(
        run,
        config,
        resume,
        None,
        &cpu(),
        &models(),
        &Losses::default(),
        &CancelToken::new(),
    )
}

/// The first step's loss of a new run.
fn first_loss(run: &Path, config: &TokenizerTrainConfig) -> f64 {
    let losses = Losses::default();
    train_tokenizer(
        run,
        config,
        false,
        None,
        &cpu(),
        &models(),
        &losses,
        &CancelToken::new(),
    )
    .unwrap();
    losses.0.into_inner().unwrap()[0]
}

/// Starts a new run quietly and stops it (a cancel) once `step` is reported.
fn train_stopping_at(
    run: &Path,
    config: &TokenizerTrainConfig,
    step: usize,
) -> textok_studio::train::tokenizer::TrainOutcome {
    let cancel = CancelToken::new();
    train_tokenizer(
        run,
        config,
        false,
        None,
        &cpu(),
        &models(),
        &StopAt(step, cancel.clone()),
        &cancel,
    )
    .unwrap()
}

fn tiny_dataset(root: &Path, count: usize) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..count {
        let image = RgbaImage::from_fn(32, 32, |x, y| {
            let on = (x / 8 + y / 8 + i as u32).is_multiple_of(2);
            if on {
                Rgba([200, 40 + 30 * i as u8, 40, 255])
            } else {
                Rgba([20, 20, 180 - 20 * i as u8, 255])
            }
        });
        image.save(root.join(format!("{i}.png"))).unwrap();
        std::fs::write(
            root.join(format!("{i}.txt")),
            format!("checkerboard number {i}"),
        )
        .unwrap();
    }
}

fn tiny_config(data: &Path, steps: usize, text: bool) -> TokenizerTrainConfig {
    let mut config = TokenizerTrainConfig::new(data.to_owned(), "tiny", text, steps, 4);
    config.learning_rate = 2e-3;
    config.warmup_steps = 5;
    config.eval_every = 1000;
    config.eval_images = 4;
    config.validation_percent = 0;
    config.seed = 7;
    config
}

#[test]
fn loss_decreases_when_overfitting_a_tiny_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let losses = Losses::default();
    let config = tiny_config(&data, 80, true);
    let outcome = train_tokenizer(
        &dir.path().join("run"),
        &config,
        false,
        None,
        &cpu(),
        &models(),
        &losses,
        &CancelToken::new(),
    )
    .unwrap();
    assert!(outcome.finished);
    let losses = losses.0.into_inner().unwrap();
    assert_eq!(losses.len(), 80);
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[70..].iter().sum::<f64>() / 10.0;
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
    // The EMA weights are a loadable TexTok checkpoint.
    let (model, config) = TexTok::load(&dir.path().join("run/ema.safetensors"), &cpu()).unwrap();
    assert!(config.text_conditioning && model.is_text_conditioned());
    let log = std::fs::read_to_string(dir.path().join("run/log.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"event\":\"step\""))
            .count(),
        9,
        "steps 1, 10, 20, ..., 80"
    );
}

#[test]
fn a_log_that_cannot_be_written_does_not_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let run = dir.path().join("run");
    // A folder where the log file should be: every append fails (as a locked file would).
    std::fs::create_dir_all(run.join("log.jsonl")).unwrap();
    let mut config = tiny_config(&data, 12, true);
    config.validation_percent = 50;
    config.eval_every = 5;
    let outcome = train(&run, &config, false).unwrap();
    assert_eq!((outcome.step, outcome.finished), (12, true));
    TexTok::load(&run.join("ema.safetensors"), &cpu()).unwrap();
}

#[test]
fn a_run_folder_is_never_overwritten_or_resumed_with_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 3);
    let encoder = models();
    let run = dir.path().join("run");
    // While another trainer holds the folder, a second one is refused before it writes.
    let held = textok_studio::train::claim_run_dir(&run, false).unwrap();
    assert!(held.is_some(), "this file system locks");
    let err = train(&run, &tiny_config(&data, 2, true), false).unwrap_err();
    assert!(err.to_string().contains("another training"), "{err}");
    assert!(!run.join("config.json").exists());
    drop(held);
    train_tokenizer(
        &run,
        &tiny_config(&data, 2, true),
        false,
        None,
        &cpu(),
        &encoder,
        &Losses::default(),
        &CancelToken::new(),
    )
    .unwrap();
    let err = train_tokenizer(
        &run,
        &tiny_config(&data, 2, true),
        false,
        None,
        &cpu(),
        &encoder,
        &Losses::default(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let mut changed = tiny_config(&data, 2, true);
    changed.learning_rate = 1.0;
    let err = train(&run, &changed, true).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
    // It names what differs, with the run's value and the one given.
    let stored_lr = tiny_config(&data, 2, true).learning_rate;
    assert!(
        err.contains(&format!("--lr {stored_lr:?} (given: 1.0)")),
        "{err}"
    );
    assert!(!err.contains("batch"), "only what differs: {err}");
    // The same data folder spelled another way is the same setting: this resume goes past
    // the settings check (and fails later only if something else is wrong).
    let mut respelled = tiny_config(&data, 2, true);
    respelled.data = data.join(".");
    let respelled_err = resolve_run_config(&run, &respelled, true).err();
    assert!(respelled_err.is_none(), "{respelled_err:?}");
    // Only --steps may grow: this continues the same run to step 4.
    let outcome = train_tokenizer(
        &run,
        &tiny_config(&data, 4, true),
        true,
        None,
        &cpu(),
        &encoder,
        &Losses::default(),
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(outcome.step, 4);
    // It may not shrink: a shorter schedule is refused, by the number given.
    let err = resolve_run_config(&run, &tiny_config(&data, 3, true), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(given: --steps 3)"), "{err}");
    // A session whose time limit passed before its speed was measured trains one step and
    // stops, unfinished: its schedule stays for a resume (not ended at full learning rate).
    let outcome = train_tokenizer(
        &run,
        &tiny_config(&data, 50, true),
        true,
        Some(std::time::Duration::ZERO),
        &cpu(),
        &encoder,
        &Losses::default(),
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!((outcome.step, outcome.finished), (5, false));
    assert_eq!(
        textok_studio::train::tokenizer::saved_progress(&run.join("state.safetensors")).unwrap(),
        (5, Some(50))
    );
    let nothing = dir.path().join("empty-run");
    let err = train_tokenizer(
        &nothing,
        &tiny_config(&data, 2, true),
        true,
        None,
        &cpu(),
        &encoder,
        &Losses::default(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nothing to resume"), "{err}");
}

#[test]
fn cancelled_training_saves_and_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 3);
    let config = tiny_config(&data, 6, false);

    let straight = dir.path().join("straight");
    train(&straight, &config, false).unwrap();

    // Cancel after 3 steps (the observer pulls the plug), then resume.
    let interrupted = dir.path().join("interrupted");
    let outcome = train_stopping_at(&interrupted, &config, 3);
    assert_eq!((outcome.step, outcome.finished), (3, false));
    // Restoring is exact: load the state and save it again without a step in between.
    let snapshot = |dir: &Path| {
        let file = CheckpointFile::read(&dir.join("state.safetensors")).unwrap();
        let (model, _) = tiny(false, 0);
        let expected = textok_studio::checkpoint::expected_parameters(&model);
        let weights: Vec<Vec<f32>> = ["model.", "ema."]
            .iter()
            .flat_map(|prefix| {
                file.validated_tensors(&expected, prefix, &[])
                    .unwrap()
                    .into_iter()
                    .map(|t| t.values)
            })
            .collect();
        (
            weights,
            file.blob("optimizer").unwrap().len(),
            file.metadata()["rng"].clone(),
            file.metadata()["step"].clone(),
        )
    };
    let before = snapshot(&interrupted);
    let (model, model_config) = tiny(false, 0);
    let restored = load_state(
        &interrupted.join("state.safetensors"),
        &model,
        new_optimizer(&config),
    )
    .unwrap();
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let state = TrainingState {
        model: &restored.0,
        optimizer: &restored.1,
        ema: &restored.2,
        progress: &restored.3,
        total_steps: config.steps,
    };
    save_state(
        &copy.join("state.safetensors"),
        &model_config,
        &config,
        state,
        &StateExtras::default(),
    )
    .unwrap();
    let after = snapshot(&copy);
    assert!(
        after.0 == before.0,
        "weights survive a load/save round trip bit for bit"
    );
    assert_eq!(
        (&after.2, &after.3),
        (&before.2, &before.3),
        "RNG and step restored"
    );
    // The optimizer blob's byte layout follows hash-map order (and its alignment padding), so its
    // content is checked below instead: without the restored Adam moments the resumed run would
    // drift ~1e-3 from the straight one.
    assert!(after.1 > 0 && before.1 > 0, "optimizer state saved");
    let outcome = train(&interrupted, &config, true).unwrap();
    assert_eq!((outcome.step, outcome.finished), (6, true));

    let weights = |dir: &Path, file: &str| {
        let (model, _) = TexTok::load(&dir.join(file), &cpu()).unwrap();
        module_to_host(&model)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.values))
            .collect::<Vec<_>>()
    };
    let max_diff = |a: Vec<(String, Vec<f32>)>, b: Vec<(String, Vec<f32>)>| {
        a.iter()
            .zip(&b)
            .flat_map(|(x, y)| x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs()))
            .fold(0.0f32, f32::max)
    };
    // Bit for bit: the same batches, budgets, Adam moments and EMA as the uninterrupted run.
    let diff = max_diff(
        weights(&straight, "ema.safetensors"),
        weights(&interrupted, "ema.safetensors"),
    );
    assert_eq!(diff, 0.0, "EMA after resume differs by {diff}");
    let state_weights = |dir: &Path| {
        let file = CheckpointFile::read(&dir.join("state.safetensors")).unwrap();
        let (model, _) = tiny(false, 0);
        let expected = textok_studio::checkpoint::expected_parameters(&model);
        file.validated_tensors(&expected, "model.", &[])
            .unwrap()
            .into_iter()
            .map(|t| t.values)
            .collect::<Vec<_>>()
    };
    let trained = state_weights(&straight)
        .iter()
        .zip(state_weights(&interrupted))
        .flat_map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0f32, f32::max);
    assert_eq!(trained, 0.0, "weights after resume differ by {trained}");
    let state = |dir: &Path| {
        let file = CheckpointFile::read(&dir.join("state.safetensors")).unwrap();
        (
            file.metadata()["rng"].clone(),
            file.metadata()["step"].clone(),
        )
    };
    assert_eq!(state(&straight), state(&interrupted));
}

#[test]
fn schedule_and_rng_behave() {
    assert!((learning_rate(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    assert!((learning_rate(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
    assert!((learning_rate(10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
    assert!((learning_rate(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    use textok_studio::train::tokenizer::ema_decay_at;
    assert!(
        (ema_decay_at(0.999, 0) - 0.1).abs() < 1e-12,
        "the first EMA update mostly copies the weights"
    );
    assert!((ema_decay_at(0.999, 90) - 0.91).abs() < 1e-12);
    assert_eq!(ema_decay_at(0.999, 1_000_000), 0.999);
    let mid = learning_rate(55, 100, 10, 1.0, 0.1);
    assert!((mid - 0.55).abs() < 1e-9, "{mid}");
    let mut a = SplitMix64::new(3);
    let mut b = SplitMix64::new(3);
    let draws: Vec<usize> = (0..1000).map(|_| a.range(32, 256)).collect();
    assert!(draws.iter().all(|k| (32..=256).contains(k)));
    assert!(draws.contains(&32) && draws.contains(&256));
    assert_eq!(
        draws,
        (0..1000).map(|_| b.range(32, 256)).collect::<Vec<_>>()
    );
}

#[test]
fn an_ema_updated_every_few_steps_equals_single_updates_of_unchanged_weights() {
    use textok_studio::train::tokenizer::{HostEma, ema_decay_at, ema_decay_over, update_ema};
    let expected = ema_decay_at(0.999, 0) * ema_decay_at(0.999, 1) * ema_decay_at(0.999, 2);
    assert!((ema_decay_over(0.999, 0, 3) - expected).abs() < 1e-15);
    assert_eq!(ema_decay_over(0.999, 7, 0), 1.0, "no steps, no decay");

    let start = module_to_host(&tiny(true, 1).0).unwrap();
    let (model, _) = tiny(true, 2);
    let mut single = start.clone();
    for step in 0..3 {
        update_ema(&mut single, &model, ema_decay_at(0.999, step)).unwrap();
    }
    let mut every_three = HostEma::new(start.clone(), 0.999, 3);
    every_three.after_step(&model, 1).unwrap();
    every_three.after_step(&model, 2).unwrap();
    assert_eq!(
        every_three.weights, start,
        "no update before the third step"
    );
    every_three.after_step(&model, 3).unwrap();
    let largest_gap = |a: &[textok_studio::checkpoint::HostTensor],
                       b: &[textok_studio::checkpoint::HostTensor]| {
        a.iter()
            .zip(b)
            .flat_map(|(a, b)| a.values.iter().zip(&b.values).map(|(x, y)| (x - y).abs()))
            .fold(0.0f32, f32::max)
    };
    assert!(largest_gap(&every_three.weights, &single) < 1e-6);
    assert!(
        largest_gap(&every_three.weights, &start) > 1e-3,
        "the update happened"
    );

    // Catching up early (before a save) applies just the steps taken so far.
    let mut caught_up = HostEma::new(start.clone(), 0.999, 3);
    caught_up.after_step(&model, 1).unwrap();
    caught_up.catch_up(&model, 1).unwrap();
    let mut one = start.clone();
    update_ema(&mut one, &model, ema_decay_at(0.999, 0)).unwrap();
    assert!(largest_gap(&caught_up.weights, &one) < 1e-6);
}

/// A DiT run on a 4-image dataset in `dir` over a tiny TexTok saved there (its config returned).
fn tiny_dit_run(
    dir: &Path,
    steps: usize,
    batch: usize,
) -> (
    textok_studio::train::dit::DitTrainConfig,
    textok_studio::model::textok::TexTokConfig,
) {
    let data = dir.join("data");
    tiny_dataset(&data, 4);
    let tokenizer = dir.join("tokenizer.safetensors");
    let (model, config) = tiny(true, 9);
    model
        .save(
            &config,
            &tokenizer,
            textok_studio::checkpoint::StoredPrecision::F32,
        )
        .unwrap();
    let mut run_config =
        textok_studio::train::dit::DitTrainConfig::new(data, tokenizer, "tiny", steps, batch);
    run_config.learning_rate = 2e-3;
    run_config.validation_percent = 0;
    (run_config, config)
}

/// Resumes a DiT run on the CPU with the shipped text encoder, with an optional time limit.
fn resume_dit_run(
    run: &Path,
    config: &textok_studio::train::dit::DitTrainConfig,
    time_limit: Option<std::time::Duration>,
) -> anyhow::Result<textok_studio::train::tokenizer::TrainOutcome> {
    textok_studio::train::dit::train_dit(
        run,
        config,
        true,
        time_limit,
        &cpu(),
        &repo_path("models/text-encoder"),
        &Losses::default(),
        &CancelToken::new(),
    )
}

/// Trains a new DiT run (no resume, no time limit) on the CPU with the shipped text encoder.
fn new_dit_run(
    run: &Path,
    config: &textok_studio::train::dit::DitTrainConfig,
) -> anyhow::Result<textok_studio::train::tokenizer::TrainOutcome> {
    textok_studio::train::dit::train_dit(
        run,
        config,
        false,
        None,
        &cpu(),
        &repo_path("models/text-encoder"),
        &Losses::default(),
        &CancelToken::new(),
    )
}

#[test]
fn dit_training_with_a_sparse_ema_saves_the_caught_up_average() {
    use textok_studio::train::dit::{DitTrainConfig, train_dit};
    let dir = tempfile::tempdir().unwrap();
    let (mut run_config, _) = tiny_dit_run(dir.path(), 3, 4);
    // With no decay the average is the latest weights, so an update left pending shows: the
    // saved state's EMA must equal its model, tensor by tensor.
    run_config.ema_decay = 0.0;
    let encoder = repo_path("models/text-encoder");
    let train_every = |every: usize, run: &Path| {
        let config = DitTrainConfig {
            ema_every: every,
            ..run_config.clone()
        };
        let cancel = CancelToken::new();
        train_dit(
            run,
            &config,
            false,
            None,
            &cpu(),
            &encoder,
            &Losses::default(),
            &cancel,
        )
    };
    for every in [2, 4] {
        let run = dir.path().join(format!("every-{every}"));
        train_every(every, &run).unwrap();
        let bytes = std::fs::read(run.join("state.safetensors")).unwrap();
        let state = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut compared = 0;
        for (name, average) in state.tensors() {
            if let Some(param) = name.strip_prefix("ema.") {
                let weights = state.tensor(&format!("model.{param}")).unwrap();
                assert_eq!(
                    average.data(),
                    weights.data(),
                    "{param}: three steps, an update every {every}: the save catches up"
                );
                compared += 1;
            }
        }
        assert!(compared > 10, "{compared} EMA tensors in the state");
    }
    let error = train_every(0, &dir.path().join("never")).unwrap_err();
    assert!(
        format!("{error:#}").contains("every 1 or more"),
        "{error:#}"
    );
}

#[test]
fn dit_training_learns_v_prediction_on_cached_latents_and_resumes() {
    use textok_studio::model::dit::Dit;
    use textok_studio::train::dit::{DitTrainConfig, train_dit};
    let dir = tempfile::tempdir().unwrap();
    let (mut run_config, config) = tiny_dit_run(dir.path(), 120, 8);
    run_config.warmup_steps = 5;
    let run = dir.path().join("dit-run");
    let losses = Losses::default();
    let encoder = repo_path("models/text-encoder");
    let outcome = train_dit(
        &run,
        &run_config,
        false,
        None,
        &cpu(),
        &encoder,
        &losses,
        &CancelToken::new(),
    )
    .unwrap();
    assert!(outcome.finished);
    let losses = losses.0.into_inner().unwrap();
    let first: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = losses[100..].iter().sum::<f64>() / 20.0;
    assert!(
        first > 0.5,
        "zero-initialised output predicts v = 0: loss ~ E[v^2] = 1, got {first}"
    );
    assert!(
        last < 0.8 * first,
        "v-prediction loss went from {first} to {last}"
    );
    assert!(run.join("latents.bin").exists(), "latents are cached");
    let (_, dit_config) = Dit::load(&run.join("ema.safetensors"), &cpu()).unwrap();
    assert!(
        dit_config.latent_std.iter().all(|s| *s > 0.0)
            && dit_config.latent_mean.iter().any(|m| *m != 0.0)
    );
    assert_eq!(
        dit_config.latent_mean.len(),
        dit_config.max_tokens * dit_config.token_dim,
        "new runs normalise per position"
    );
    assert_eq!(
        dit_config.tokenizer_encoder_sha256,
        Some(TexTok::encoder_sha256(&run_config.tokenizer).unwrap()),
        "the DiT records whose tokens it learned"
    );
    assert_eq!(
        dit_config.trained_budgets(),
        run_config.min_budget..=run_config.max_budget.min(config.max_tokens),
        "the checkpoint records the budgets it was trained on"
    );
    // Resuming with more steps continues from the saved state (the latent cache is reused).
    let longer = DitTrainConfig {
        steps: 125,
        ..run_config.clone()
    };
    let outcome = resume_dit_run(&run, &longer, None).unwrap();
    assert_eq!(outcome.step, 125);
    // A session whose time limit passed before its speed was measured trains one step and
    // stops, unfinished, its schedule kept for a resume.
    let outcome = resume_dit_run(
        &run,
        &DitTrainConfig {
            steps: 400,
            ..run_config.clone()
        },
        Some(std::time::Duration::ZERO),
    )
    .unwrap();
    assert_eq!((outcome.step, outcome.finished), (126, false));
    // The tokenizer file rewritten with another encoder (its own run trained on, say): the
    // DiT run refuses to go on learning other tokens.
    let (other, other_config) = tiny(true, 10);
    other
        .save(
            &other_config,
            &run_config.tokenizer,
            textok_studio::checkpoint::StoredPrecision::F32,
        )
        .unwrap();
    let error = resume_dit_run(
        &run,
        &DitTrainConfig {
            steps: 500,
            ..run_config.clone()
        },
        None,
    )
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("encoder changed since the run started"),
        "{error:#}"
    );
}

#[test]
fn time_limit_shortens_the_schedule_to_what_fits_before_the_deadline() {
    use std::time::{Duration, Instant};
    use textok_studio::train::{Evaluations, TimeLimit};
    let start = Instant::now();
    let at = |seconds| start + Duration::from_secs(seconds);
    let limit = TimeLimit::new(Duration::from_secs(100), start);
    let measured = TimeLimit::STEPS_BEFORE_FITTING;
    // Until the speed is measured (the first steps compile kernels), the requested count stands.
    assert_eq!(limit.fit(10, 5000, 10, Some(0.01), None, at(5)), 5000);
    assert_eq!(limit.fit(100, 5000, measured, None, None, at(5)), 5000);
    // 2 steps/s with 60 s left: this step's successor and 120 more.
    assert_eq!(limit.fit(100, 5000, measured, Some(2.0), None, at(40)), 221);
    // Evaluations of 5 s every 10 steps: 55 s after the closing one, 0.5 + 0.5 s a step.
    let evaluations = Some(Evaluations {
        every: 10,
        seconds: 5.0,
    });
    assert_eq!(
        limit.fit(100, 5000, measured, Some(2.0), evaluations, at(40)),
        156
    );
    // A faster pace never goes past the requested count.
    assert_eq!(limit.fit(100, 500, measured, Some(50.0), None, at(40)), 500);
    // From the deadline on: stop at the current step.
    assert_eq!(
        limit.fit(321, 5000, measured, Some(2.0), None, at(100)),
        321
    );
    // Unless the speed was never measured: the schedule stays (the session pauses instead of
    // ending the run at full learning rate).
    assert_eq!(limit.fit(321, 5000, 0, None, None, at(150)), 5000);
    assert_eq!(limit.fit(321, 5000, 10, Some(2.0), None, at(150)), 5000);
}

#[test]
fn the_speed_leaves_out_pauses_such_as_evaluations() {
    use std::time::{Duration, Instant};
    use textok_studio::train::Eta;
    let start = Instant::now();
    let at = |seconds| start + Duration::from_secs(seconds);
    let (mut paused, mut excluded) = (Eta::new(), Eta::new());
    for eta in [&mut paused, &mut excluded] {
        eta.record_at(0, at(0));
        eta.record_at(10, at(5));
    }
    // A 5 s evaluation, then 10 more steps in 5 s.
    excluded.exclude(Duration::from_secs(5));
    for eta in [&mut paused, &mut excluded] {
        eta.record_at(20, at(15));
    }
    assert_eq!(excluded.rate(), Some(2.0));
    assert!((paused.rate().unwrap() - 20.0 / 15.0).abs() < 1e-9);
}

/// Rewrites one metadata entry of a safetensors file, keeping its tensors.
fn set_metadata(path: &Path, key: &str, value: &str) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap_or_default();
    metadata.insert(key.to_owned(), value.to_owned());
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rewritten = safetensors::serialize(tensors.tensors(), Some(metadata)).unwrap();
    std::fs::write(path, rewritten).unwrap();
}

/// A temporary folder with three tiny captioned images in `data` and a `run` folder's path.
fn tiny_run_setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 3);
    let run = dir.path().join("run");
    (dir, data, run)
}

/// Records each step's schedule length and learning rate.
#[derive(Default)]
struct Schedule(Mutex<Vec<(usize, usize, f64)>>);

impl TrainObserver for Schedule {
    fn on_step(&self, report: &StepReport) {
        self.0
            .lock()
            .unwrap()
            .push((report.step, report.total, report.lr));
    }
}

#[test]
fn a_resume_keeps_the_schedule_a_time_limit_fitted() {
    let (_dir, data, run) = tiny_run_setup();
    let config = tiny_config(&data, 8, true);
    let outcome = train_stopping_at(&run, &config, 2);
    assert_eq!((outcome.step, outcome.finished), (2, false));
    // As a session whose time limit fitted the schedule to 5 steps saves it, then was stopped.
    let state = run.join("state.safetensors");
    set_metadata(&state, "total_steps", "5");
    let schedule = Schedule::default();
    let resume = |config: &TokenizerTrainConfig, observer: &dyn TrainObserver| {
        train_tokenizer(
            &run,
            config,
            true,
            None,
            &cpu(),
            &models(),
            observer,
            &CancelToken::new(),
        )
        .unwrap()
    };
    let outcome = resume(&config, &schedule);
    assert_eq!((outcome.step, outcome.finished), (5, true));
    let warmup = config.warmup_steps.min(5 / 2);
    for &(step, total, lr) in schedule.0.lock().unwrap().iter() {
        assert_eq!(total, 5, "step {step}");
        let expected = learning_rate(
            step - 1,
            5,
            warmup,
            config.learning_rate,
            config.min_lr_ratio,
        );
        assert!(
            (lr - expected).abs() < 1e-12,
            "step {step}: {lr} vs {expected}"
        );
    }
    // Finished at its fitted length; a resume with more --steps lengthens it.
    let outcome = resume(&config, &Losses::default());
    assert_eq!((outcome.step, outcome.finished), (5, true));
    let outcome = resume(&tiny_config(&data, 9, true), &Losses::default());
    assert_eq!((outcome.step, outcome.finished), (9, true));
}

#[test]
fn adversarial_training_runs_and_resumes_with_its_discriminator() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 3);
    let mut config = tiny_config(&data, 6, true);
    config.adversarial_weight = 0.1;
    config.discriminator_start = 2;
    let run = dir.path().join("gan");
    let outcome = train_stopping_at(&run, &config, 4);
    assert_eq!(outcome.step, 4);
    let state = CheckpointFile::read(&run.join("state.safetensors")).unwrap();
    assert!(
        state.blob("disc_optimizer").is_some(),
        "the discriminator is part of the state"
    );
    assert!(
        state
            .stored_tensors()
            .iter()
            .any(|t| t.name.starts_with("disc."))
    );
    let lecam: f64 = state.metadata()["lecam_real"].parse().unwrap();
    assert!(
        lecam != 0.0 && lecam.is_finite(),
        "LeCAM running mean moved: {lecam}"
    );
    let outcome = train(&run, &config, true).unwrap();
    assert_eq!((outcome.step, outcome.finished), (6, true));
}

/// A tiny text-conditioned TexTok saved as `start.safetensors` (f32) in `dir`, to fine-tune from.
fn save_tiny_start(dir: &Path, seed: u64) -> (TexTok, std::path::PathBuf) {
    let (start, start_config) = tiny(true, seed);
    let checkpoint = dir.join("start.safetensors");
    start
        .save(
            &start_config,
            &checkpoint,
            textok_studio::checkpoint::StoredPrecision::F32,
        )
        .unwrap();
    (start, checkpoint)
}

#[test]
fn fine_tuning_starts_from_the_given_checkpoint_and_checks_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let (start, checkpoint) = save_tiny_start(dir.path(), 99);

    // With a zero learning rate one step changes nothing: the EMA is the starting checkpoint,
    // not the seed-7 random initialisation the run would otherwise use.
    let mut config = tiny_config(&data, 1, true);
    config.learning_rate = 0.0;
    config.init_from = Some(checkpoint.clone());
    train(&dir.path().join("run"), &config, false).unwrap();
    let (tuned, _) = TexTok::load(&dir.path().join("run/ema.safetensors"), &cpu()).unwrap();
    let expected = module_to_host(&start).unwrap();
    let got = module_to_host(&tuned).unwrap();
    assert_eq!(expected.len(), got.len());
    for (a, b) in expected.iter().zip(&got) {
        // EMA arithmetic (d*x + (1-d)*x) may round in the last bit.
        let worst = a
            .values
            .iter()
            .zip(&b.values)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{} moved by {worst}", a.name);
    }

    // A TexTok run cannot start from a Baseline checkpoint.
    let (baseline, baseline_config) = tiny(false, 5);
    let wrong = dir.path().join("baseline.safetensors");
    baseline
        .save(
            &baseline_config,
            &wrong,
            textok_studio::checkpoint::StoredPrecision::F32,
        )
        .unwrap();
    config.init_from = Some(wrong);
    let error = train(&dir.path().join("run2"), &config, false).unwrap_err();
    assert!(
        format!("{error:#}").contains("is a Baseline model"),
        "{error:#}"
    );
}

#[test]
fn a_fine_tune_resumes_after_the_checkpoint_it_started_from_is_gone() {
    use textok_studio::model::dit::Dit;
    use textok_studio::train::dit::DitTrainConfig;
    // The app lets a run be deleted once no model in use points at it; a later run fine-tuned
    // from it must still resume, since its state holds every weight.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let (_, checkpoint) = save_tiny_start(dir.path(), 17);
    let mut config = tiny_config(&data, 2, true);
    config.init_from = Some(checkpoint.clone());
    let run = dir.path().join("run");
    train(&run, &config, false).unwrap();
    std::fs::remove_file(&checkpoint).unwrap();
    let longer = TokenizerTrainConfig {
        steps: 4,
        ..config.clone()
    };
    let outcome = train(&run, &longer, true).unwrap();
    assert_eq!((outcome.step, outcome.finished), (4, true));

    // The same for a DiT, whose config (latent statistics, trained budgets) comes from the
    // start file in a new fine-tune and from the state in a resumed one.
    let (first, _) = tiny_dit_run(&dir.path().join("dit"), 2, 2);
    new_dit_run(&dir.path().join("dit-first"), &first).unwrap();
    let start = dir.path().join("dit-start.safetensors");
    std::fs::copy(dir.path().join("dit-first/ema.safetensors"), &start).unwrap();
    let (_, start_config) = Dit::load(&start, &cpu()).unwrap();
    let tune = DitTrainConfig {
        init_from: Some(start.clone()),
        ..first.clone()
    };
    let tuned = dir.path().join("dit-tuned");
    new_dit_run(&tuned, &tune).unwrap();
    std::fs::remove_file(&start).unwrap();
    let outcome = textok_studio::train::dit::train_dit(
        &tuned,
        &DitTrainConfig { steps: 4, ..tune },
        true,
        None,
        &cpu(),
        &repo_path("models/text-encoder"),
        &Losses::default(),
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!((outcome.step, outcome.finished), (4, true));
    let (_, resumed) = Dit::load(&tuned.join("ema.safetensors"), &cpu()).unwrap();
    assert_eq!(resumed.latent_mean, start_config.latent_mean);
    assert_eq!(resumed.latent_std, start_config.latent_std);
    assert_eq!(resumed.trained_budgets(), start_config.trained_budgets());
}

#[test]
fn a_frozen_encoder_keeps_the_tokens_while_the_decoder_learns_noisy_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let (start, checkpoint) = save_tiny_start(dir.path(), 31);

    // Freezing needs a trained model to start from.
    let mut config = tiny_config(&data, 6, true);
    config.freeze_encoder = true;
    let error = train(&dir.path().join("no-start"), &config, false).unwrap_err();
    assert!(format!("{error:#}").contains("--init-from"), "{error:#}");

    config.init_from = Some(checkpoint.clone());
    config.token_noise = 0.5;
    config.ema_decay = 0.0; // the EMA is the last weights: any change shows
    train(&dir.path().join("frozen"), &config, false).unwrap();
    let tuned_file = dir.path().join("frozen/ema.safetensors");
    let (tuned, _) = TexTok::load(&tuned_file, &cpu()).unwrap();
    let (mut encoder_moved, mut decoder_moved) = (0.0f32, 0.0f32);
    for (a, b) in module_to_host(&start)
        .unwrap()
        .iter()
        .zip(&module_to_host(&tuned).unwrap())
    {
        assert_eq!(a.name, b.name);
        let moved = a
            .values
            .iter()
            .zip(&b.values)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        if TexTok::is_encoder_tensor(&a.name) {
            encoder_moved = encoder_moved.max(moved);
        } else {
            decoder_moved = decoder_moved.max(moved);
        }
    }
    assert!(
        encoder_moved < 1e-6,
        "the frozen encoder moved by {encoder_moved}"
    );
    assert!(
        decoder_moved > 1e-4,
        "the decoder did not train ({decoder_moved})"
    );
    // So the run's file makes the tokens the start made: the same encoder hash (what a DiT's
    // latent cache is keyed by), though the files differ.
    assert_eq!(
        TexTok::encoder_sha256(&checkpoint).unwrap(),
        TexTok::encoder_sha256(&tuned_file).unwrap()
    );
    assert_ne!(
        textok_studio::files::sha256_file(&checkpoint).unwrap(),
        textok_studio::files::sha256_file(&tuned_file).unwrap()
    );
    // The same from an f16 file (as shipped) with a decaying EMA (as the app fine-tunes): the
    // run's f32 EMA keeps the frozen weights' exact values, and the hash reads values, not bytes.
    let (start_config, half) = (tiny(true, 31).1, dir.path().join("start-f16.safetensors"));
    start
        .save(
            &start_config,
            &half,
            textok_studio::checkpoint::StoredPrecision::F16,
        )
        .unwrap();
    let mut from_half = config.clone();
    from_half.init_from = Some(half.clone());
    from_half.ema_decay = 0.999;
    from_half.steps = 3;
    train(&dir.path().join("frozen-f16"), &from_half, false).unwrap();
    assert_eq!(
        TexTok::encoder_sha256(&half).unwrap(),
        TexTok::encoder_sha256(&dir.path().join("frozen-f16/ema.safetensors")).unwrap()
    );

    // The noise reaches the decoder: with no learning, the first loss differs from a noiseless run.
    let first_loss = |noise: f64, run: &str| {
        let mut config = config.clone();
        config.steps = 1;
        config.learning_rate = 0.0;
        config.token_noise = noise;
        first_loss(&dir.path().join(run), &config)
    };
    let (clean, noisy) = (first_loss(0.0, "clean"), first_loss(2.0, "noisy"));
    assert!(noisy != clean, "token noise changed nothing ({clean})");
}

#[test]
fn dit_runs_from_before_latent_norm_keep_per_channel_statistics() {
    use textok_studio::train::dit::{DitTrainConfig, LatentNorm};
    let config = DitTrainConfig::new("data".into(), "tok.safetensors".into(), "tiny", 10, 2);
    assert_eq!(config.latent_norm, LatentNorm::Position, "new runs");
    let mut stored = serde_json::to_value(&config).unwrap();
    stored.as_object_mut().unwrap().remove("latent_norm");
    stored.as_object_mut().unwrap().remove("ema_every");
    let old: DitTrainConfig = serde_json::from_value(stored).unwrap();
    assert_eq!(old.latent_norm, LatentNorm::Channel);
    assert_eq!(
        old.ema_every, 1,
        "runs from before --ema-every updated every step"
    );
}

#[test]
fn geometry_positions_need_a_pyramid_tokenizer() {
    use textok_studio::model::textok::TexTokConfig;
    use textok_studio::train::dit::{DitTrainConfig, PositionInit};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let run = |tokenizer_config: TexTokConfig, name: &str| {
        let tokenizer = dir.path().join(format!("{name}.safetensors"));
        tokenizer_config
            .init(&cpu())
            .save(
                &tokenizer_config,
                &tokenizer,
                textok_studio::checkpoint::StoredPrecision::F32,
            )
            .unwrap();
        let mut config = DitTrainConfig::new(data.clone(), tokenizer, "tiny", 2, 2);
        config.validation_percent = 0;
        config.position_init = PositionInit::Geometry;
        new_dit_run(&dir.path().join(name), &config)
    };
    assert!(run(TexTokConfig::tiny(true), "pyramid").unwrap().finished);
    let error = run(TexTokConfig::tiny(true).with_pyramid(None), "plain").unwrap_err();
    assert!(
        error.to_string().contains("pyramid layout"),
        "clear message: {error}"
    );
}

#[test]
fn a_run_continues_with_more_steps_keeping_its_derived_warmup() {
    use textok_studio::train::dit::DitTrainConfig;
    use textok_studio::train::resolve_run_config;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // As `train dit --steps N` builds them: the warm-up is derived from the length (60 and 120).
    let config =
        |steps| DitTrainConfig::new("data".into(), "t.safetensors".into(), "small", steps, 32);
    let first = resolve_run_config(&run, &config(1200), false).unwrap();
    assert_eq!(first.warmup_steps, 60);
    std::fs::write(run.join("state.safetensors"), b"stand-in").unwrap();

    let longer = resolve_run_config(&run, &config(2400), true).unwrap();
    assert_eq!(
        (longer.steps, longer.warmup_steps),
        (2400, 60),
        "the run's own warm-up"
    );
    let stored: DitTrainConfig =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(stored, longer);

    // A warm-up chosen explicitly is a setting like any other.
    let mut chosen = config(3600);
    chosen.warmup_steps = 7;
    let err = resolve_run_config(&run, &chosen, true).unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
    // Fewer steps than the run's schedule are refused, saying what to do (before, they were
    // silently raised, and the user believed the run would end sooner).
    let err = resolve_run_config(&run, &config(600), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("leave --steps out"), "{err}");
}

/// A DiT run's latent cache: its JSON header and the latents' bytes.
fn read_latent_cache(run: &Path) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(run.join("latents.bin")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    (header, bytes[8 + header_len..].to_vec())
}

/// Writes `run/latents.bin` with `header` and the cached `values` (a cache as another run or
/// an earlier build made it).
fn write_latent_cache(run: &Path, header: &serde_json::Value, values: &[u8]) {
    let header = serde_json::to_vec(header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(values);
    std::fs::create_dir_all(run).unwrap();
    std::fs::write(run.join("latents.bin"), &bytes).unwrap();
}

/// The `tokens` a DiT run's latent cache holds per image.
fn cached_tokens(run: &Path) -> u64 {
    read_latent_cache(run).0["tokens"].as_u64().unwrap()
}

#[test]
fn a_latent_cache_cut_to_the_trained_budgets_is_used_and_a_too_short_one_is_encoded_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut run_config, config) = tiny_dit_run(dir.path(), 1, 2);
    run_config.max_budget = 40;
    let train = new_dit_run;
    let full = dir.path().join("full");
    train(&full, &run_config).unwrap();
    assert_eq!(cached_tokens(&full), config.max_tokens as u64);

    // Cut the cache to each image's first 40 tokens, as `models/scripts/device/pack.py` does.
    let (mut header, values) = read_latent_cache(&full);
    let (tokens, dim) = (config.max_tokens, config.token_dim);
    let rows = values.chunks_exact(tokens * dim * 4);
    let cut_values: Vec<u8> = rows.flat_map(|row| row[..40 * dim * 4].to_vec()).collect();
    header["tokens"] = 40.into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut cut = (header.len() as u64).to_le_bytes().to_vec();
    cut.extend(header);
    cut.extend(cut_values);
    for name in ["cut", "short"] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("latents.bin"), &cut).unwrap();
    }

    // Budgets up to 40 train from the cut cache as it is (with per-channel statistics; a new
    // run's per-position ones need every token) ...
    run_config.latent_norm = textok_studio::train::dit::LatentNorm::Channel;
    let run = dir.path().join("cut");
    train(&run, &run_config).unwrap();
    assert_eq!(
        cached_tokens(&run),
        40,
        "the cut cache was used, not encoded again"
    );
    // ... larger ones need the tokens it lacks: encoded again, not an index out of bounds.
    let run = dir.path().join("short");
    run_config.max_budget = 48;
    train(&run, &run_config).unwrap();
    assert_eq!(cached_tokens(&run), config.max_tokens as u64);
    // So do a new run's per-position statistics.
    let run = dir.path().join("position");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("latents.bin"), &cut).unwrap();
    run_config.max_budget = 40;
    run_config.latent_norm = textok_studio::train::dit::LatentNorm::Position;
    train(&run, &run_config).unwrap();
    assert_eq!(cached_tokens(&run), config.max_tokens as u64);
}

/// Records the trainer's messages.
#[derive(Default)]
struct Messages(Mutex<Vec<String>>);

impl TrainObserver for Messages {
    fn on_message(&self, message: &str) {
        self.0.lock().unwrap().push(message.to_owned());
    }
}

#[test]
fn a_state_cut_short_is_refused_before_the_data_loads() {
    let (_dir, data, run) = tiny_run_setup();
    let config = tiny_config(&data, 2, true);
    train(&run, &config, false).unwrap();
    let state = run.join("state.safetensors");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() - 100]).unwrap();
    let messages = Messages::default();
    let longer = tiny_config(&data, 4, true);
    let error = train_tokenizer(
        &run,
        &longer,
        true,
        None,
        &cpu(),
        &models(),
        &messages,
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(format!("{error:#}").contains("cut short"), "{error:#}");
    let messages = messages.0.into_inner().unwrap();
    assert!(
        !messages.iter().any(|m| m.starts_with("loading")),
        "{messages:?}"
    );
}

/// A DiT run's cached latent rows, by image path.
fn latent_rows(run: &Path) -> std::collections::HashMap<String, Vec<u8>> {
    let (header, values) = read_latent_cache(run);
    let paths: Vec<String> = serde_json::from_value(header["paths"].clone()).unwrap();
    let row = values.len() / paths.len();
    paths
        .into_iter()
        .zip(values.chunks_exact(row).map(<[u8]>::to_vec))
        .collect()
}

#[test]
fn a_caption_edited_in_place_has_its_latents_encoded_again() {
    let dir = tempfile::tempdir().unwrap();
    let (run_config, _) = tiny_dit_run(dir.path(), 1, 2);
    let run = dir.path().join("run");
    new_dit_run(&run, &run_config).unwrap();
    let before = latent_rows(&run);
    assert_eq!(before.len(), 4);

    std::fs::write(run_config.data.join("2.txt"), "a caption written since").unwrap();
    let messages = Messages::default();
    textok_studio::train::dit::train_dit(
        &run,
        &textok_studio::train::dit::DitTrainConfig {
            steps: 2,
            ..run_config.clone()
        },
        true,
        None,
        &cpu(),
        &repo_path("models/text-encoder"),
        &messages,
        &CancelToken::new(),
    )
    .unwrap();
    let messages = messages.0.into_inner().unwrap();
    assert!(
        messages
            .iter()
            .any(|m| m == "encoding the latents of 1 new or changed image"),
        "{messages:?}"
    );
    let after = latent_rows(&run);
    assert_eq!(after.len(), 4);
    for (path, row) in &before {
        if path == "2.png" {
            assert_ne!(&after[path], row, "{path}: the new caption's tokens");
        } else {
            assert_eq!(&after[path], row, "{path}: kept from the cache");
        }
    }
}

/// `tokenizer` saved again as `out` with one tensor's values shifted: `to_pixels.bias` (a
/// detokenizer tensor) or `to_tokens.bias` (a tokenizer one).
fn save_with_shifted_tensor(tokenizer: &Path, tensor: &str, out: &Path) {
    use textok_studio::checkpoint::{StoredPrecision, save_host_tensors};
    let (model, config) = TexTok::load(tokenizer, &cpu()).unwrap();
    let mut tensors = module_to_host(&model).unwrap();
    let shifted = tensors.iter_mut().find(|t| t.name == tensor).unwrap();
    shifted.values.iter_mut().for_each(|v| *v += 0.25);
    save_host_tensors(
        &tensors,
        out,
        textok_studio::model::textok::KIND_TEXTOK,
        &config,
        StoredPrecision::F32,
        Default::default(),
    )
    .unwrap();
}

#[test]
fn a_latent_cache_serves_a_tokenizer_whose_detokenizer_alone_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut run_config, _) = tiny_dit_run(dir.path(), 1, 2);
    run_config.latent_norm = textok_studio::train::dit::LatentNorm::Channel;
    let original = run_config.tokenizer.clone();
    let new_decoder = dir.path().join("new-decoder.safetensors");
    let new_encoder = dir.path().join("new-encoder.safetensors");
    save_with_shifted_tensor(&original, "to_pixels.bias", &new_decoder);
    save_with_shifted_tensor(&original, "to_tokens.bias", &new_encoder);
    let encoder_hash = |path: &Path| TexTok::encoder_sha256(path).unwrap();
    assert_eq!(encoder_hash(&original), encoder_hash(&new_decoder));
    assert_ne!(encoder_hash(&original), encoder_hash(&new_encoder));

    let first = dir.path().join("first");
    let train = |run: &Path, tokenizer: &Path| {
        let config = textok_studio::train::dit::DitTrainConfig {
            tokenizer: tokenizer.to_owned(),
            ..run_config.clone()
        };
        new_dit_run(run, &config).unwrap();
    };
    train(&first, &original);
    let (header, values) = read_latent_cache(&first);
    let original_file_hash = textok_studio::files::sha256_file(&original).unwrap();
    assert_eq!(header["tokenizer_sha256"], original_file_hash.as_str());
    assert_eq!(header["encoder_sha256"], encoder_hash(&original).as_str());

    // Each new run starts with a copy of the first run's cache.
    for (name, tokenizer, reused) in [
        ("same-encoder", &new_decoder, true),
        ("other-encoder", &new_encoder, false),
    ] {
        let run = dir.path().join(name);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::copy(first.join("latents.bin"), run.join("latents.bin")).unwrap();
        train(&run, tokenizer);
        let (header, new_values) = read_latent_cache(&run);
        let file_hash = textok_studio::files::sha256_file(tokenizer).unwrap();
        if reused {
            assert_eq!(
                header["tokenizer_sha256"],
                original_file_hash.as_str(),
                "{name}"
            );
            assert_eq!(new_values, values, "{name}");
        } else {
            assert_eq!(header["tokenizer_sha256"], file_hash.as_str(), "{name}");
            assert_ne!(
                new_values, values,
                "{name}: the tokens were not encoded again"
            );
        }
    }

    // A cache keyed to a stand-in tokenizer file (pack.py's zeroed one; here the other
    // encoder's) that names the real encoder: used, and the DiT records the real encoder.
    let (mut header, values) = read_latent_cache(&first);
    header["tokenizer_sha256"] = textok_studio::files::sha256_file(&new_encoder)
        .unwrap()
        .into();
    let run = dir.path().join("packed");
    write_latent_cache(&run, &header, &values);
    train(&run, &new_encoder);
    assert_eq!(
        read_latent_cache(&run).1,
        values,
        "the packed cache was used"
    );
    let (_, dit_config) =
        textok_studio::model::dit::Dit::load(&run.join("ema.safetensors"), &cpu()).unwrap();
    assert_eq!(
        dit_config.tokenizer_encoder_sha256,
        Some(encoder_hash(&original))
    );

    // A cache from before the encoder hash rounded to f16 names the tokenizer by its exact
    // hash: it is still used, and the DiT records the rounded hash, which the tokenizer's
    // f16 export shares.
    let checkpoint = textok_studio::checkpoint::CheckpointFile::read(&original).unwrap();
    let exact = TexTok::exact_encoder_sha256_of(&checkpoint).unwrap();
    assert_ne!(
        exact,
        encoder_hash(&original),
        "the tiny f32 weights are not f16 values"
    );
    let (mut header, values) = read_latent_cache(&first);
    header["tokenizer_sha256"] = "an earlier file".into();
    header["encoder_sha256"] = exact.into();
    let run = dir.path().join("before-rounding");
    write_latent_cache(&run, &header, &values);
    train(&run, &original);
    assert_eq!(read_latent_cache(&run).1, values, "the old cache was used");
    let (_, dit_config) =
        textok_studio::model::dit::Dit::load(&run.join("ema.safetensors"), &cpu()).unwrap();
    assert_eq!(
        dit_config.tokenizer_encoder_sha256,
        Some(encoder_hash(&original))
    );
}

/// Records whether each evaluation scored held-out images.
struct HeldOut(Mutex<Vec<bool>>);

impl TrainObserver for HeldOut {
    fn on_eval(&self, report: &textok_studio::train::tokenizer::EvalReport) {
        self.0.lock().unwrap().push(report.held_out);
    }
}

#[test]
fn an_evaluation_on_training_images_says_it_is_not_held_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 8);
    for (percent, held_out) in [(0, false), (50, true)] {
        let mut config = tiny_config(&data, 2, true);
        config.eval_every = 1;
        config.validation_percent = percent;
        let observer = HeldOut(Mutex::new(Vec::new()));
        train_tokenizer(
            &dir.path().join(format!("run-{percent}")),
            &config,
            false,
            None,
            &cpu(),
            &models(),
            &observer,
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!(
            observer.0.into_inner().unwrap(),
            [held_out, held_out],
            "{percent} % held out"
        );
    }
}

#[test]
fn an_ema_of_weights_that_do_not_change_keeps_their_exact_values() {
    use textok_studio::train::tokenizer::update_ema;
    let (model, _) = tiny(true, 13);
    let weights = module_to_host(&model).unwrap();
    let mut ema = weights.clone();
    for decay in [0.9, 0.999, 0.37, 0.5] {
        update_ema(&mut ema, &model, decay).unwrap();
    }
    // `d*a + (1-d)*a` rounds away from `a` for some values; a frozen encoder's must not move
    // (its hash keys the tokens cached for a DiT).
    assert!(ema == weights, "the average of unchanged weights drifted");
}

#[test]
fn a_refinement_head_added_to_a_trained_model_starts_as_the_identity_and_trains() {
    use burn::tensor::{Distribution, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let (start, checkpoint) = save_tiny_start(dir.path(), 31);

    // Added, the head changes nothing yet: the same image for the same tokens.
    let head = textok_studio::model::textok::RefineHead::new(4, &cpu());
    let image = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 0.5), &cpu());
    let same: f32 = head
        .forward(image.clone())
        .sub(image)
        .abs()
        .max()
        .into_scalar();
    assert!(same < 1e-7, "an added head moved the image by {same}");

    // A detokenizer fine-tune that adds it: the head trains, the tokens stay (same encoder
    // hash, so a DiT and its latent cache stay valid), and the file loads with its head.
    let mut config = tiny_config(&data, 4, true);
    config.init_from = Some(checkpoint.clone());
    config.freeze_encoder = true;
    config.refine_channels = Some(4);
    config.ema_decay = 0.0;
    train(&dir.path().join("refined"), &config, false).unwrap();
    let tuned_file = dir.path().join("refined/ema.safetensors");
    let (tuned, tuned_config) = TexTok::load(&tuned_file, &cpu()).unwrap();
    assert_eq!(tuned_config.refine_channels, Some(4));
    let trained: f32 = tuned
        .refine
        .as_ref()
        .expect("the head is saved")
        .project
        .weight
        .val()
        .abs()
        .max()
        .into_scalar();
    assert!(trained > 0.0, "the head's output layer left zero");
    assert!(start.refine.is_none());
    assert_eq!(
        TexTok::encoder_sha256(&checkpoint).unwrap(),
        TexTok::encoder_sha256(&tuned_file).unwrap()
    );
    // A second head of another size is refused, by the flag.
    let mut again = config.clone();
    again.init_from = Some(tuned_file.clone());
    again.refine_channels = Some(8);
    let error = train(&dir.path().join("twice"), &again, false).unwrap_err();
    assert!(
        format!("{error:#}").contains("--refine-head 8"),
        "{error:#}"
    );
}

#[test]
fn a_decoder_for_generation_trains_on_tokens_its_dit_regenerated() {
    use textok_studio::model::dit::DitConfig;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 4);
    let (_, checkpoint) = save_tiny_start(dir.path(), 41);
    let device = cpu();
    // A DiT with output weights, so its regenerated tokens depend on the network.
    let save_dit = |name: &str, encoder_hash: String| {
        let mut config = DitConfig::tiny();
        config.tokenizer_encoder_sha256 = Some(encoder_hash);
        let mut dit = textok_studio::device::init_module(&device, Some(3), || config.init(&device));
        let _seeded = textok_studio::device::seeded(&device, 3);
        dit.output.weight = burn::module::Param::from_tensor(burn::tensor::Tensor::random(
            [32, 8],
            burn::tensor::Distribution::Normal(0.0, 0.5),
            &device,
        ));
        let path = dir.path().join(name);
        dit.save(
            &config,
            &path,
            textok_studio::checkpoint::StoredPrecision::F32,
        )
        .unwrap();
        path
    };
    let own = save_dit(
        "own.safetensors",
        TexTok::encoder_sha256(&checkpoint).unwrap(),
    );
    let other = save_dit("other.safetensors", "0".repeat(64));

    let mut config = tiny_config(&data, 1, true);
    config.init_from = Some(checkpoint.clone());
    config.learning_rate = 0.0;
    config.regenerate_with = Some(own.clone());
    // The DiT reads the tokens it was trained on: the encoder must stay as it is.
    let error = train(&dir.path().join("unfrozen"), &config, false).unwrap_err();
    assert!(
        format!("{error:#}").contains("--freeze-encoder"),
        "{error:#}"
    );
    config.freeze_encoder = true;
    let mut no_text = config.clone();
    no_text.text_conditioning = false;
    let error = train(&dir.path().join("baseline"), &no_text, false).unwrap_err();
    assert!(
        format!("{error:#}").contains("--regenerate-with"),
        "{error:#}"
    );
    // A DiT trained on another tokenizer's tokens is refused by name.
    let mut mismatched = config.clone();
    mismatched.regenerate_with = Some(other);
    let error = train(&dir.path().join("other"), &mismatched, false).unwrap_err();
    assert!(
        format!("{error:#}").contains("another tokenizer"),
        "{error:#}"
    );

    // The regenerated tokens reach the decoder: with no learning, the first loss differs from
    // a run on the plain tokens, and the same run again gives the same loss.
    let first_loss =
        |config: &TokenizerTrainConfig, run: &str| first_loss(&dir.path().join(run), config);
    let regenerated = first_loss(&config, "regenerated");
    assert_eq!(regenerated, first_loss(&config, "again"), "reproducible");
    let plain = TokenizerTrainConfig {
        regenerate_with: None,
        ..config.clone()
    };
    let clean = first_loss(&plain, "plain");
    assert!(
        regenerated != clean,
        "regeneration changed nothing ({clean})"
    );

    // A DiT that never learned the run's budgets is refused, not asked for noise.
    let narrow = {
        let mut config = DitConfig::tiny();
        config.trained_max_budget = Some(64);
        config.tokenizer_encoder_sha256 = Some(TexTok::encoder_sha256(&checkpoint).unwrap());
        let dit = textok_studio::device::init_module(&device, Some(3), || config.init(&device));
        let path = dir.path().join("narrow.safetensors");
        dit.save(
            &config,
            &path,
            textok_studio::checkpoint::StoredPrecision::F32,
        )
        .unwrap();
        path
    };
    let narrow_run = TokenizerTrainConfig {
        regenerate_with: Some(narrow),
        ..config.clone()
    };
    let error = train(&dir.path().join("narrow"), &narrow_run, false).unwrap_err();
    assert!(format!("{error:#}").contains("32..=64"), "{error:#}");

    // Stopped and resumed (its start checkpoint gone by then: the state holds every weight),
    // the run ends with the weights of one that ran straight through: the same timesteps and
    // noise were drawn.
    let learning = TokenizerTrainConfig {
        steps: 4,
        learning_rate: 2e-3,
        ema_decay: 0.0,
        ..config.clone()
    };
    train(&dir.path().join("straight"), &learning, false).unwrap();
    let interrupted = dir.path().join("interrupted");
    let outcome = train_stopping_at(&interrupted, &learning, 2);
    assert_eq!((outcome.step, outcome.finished), (2, false));
    let moved = dir.path().join("start-moved.safetensors");
    std::fs::rename(&checkpoint, &moved).unwrap();
    train(&interrupted, &learning, true).unwrap();
    std::fs::rename(&moved, &checkpoint).unwrap();
    let weights = |run: &str| {
        let (model, _) =
            TexTok::load(&dir.path().join(run).join("ema.safetensors"), &cpu()).unwrap();
        module_to_host(&model).unwrap()
    };
    for (a, b) in weights("straight").iter().zip(&weights("interrupted")) {
        assert_eq!(a.values, b.values, "{}", a.name);
    }
}

/// The f32 row a DiT run's latent cache holds for `key`.
fn cached_latent_row(run: &Path, key: &str) -> Option<Vec<f32>> {
    let (header, values) = read_latent_cache(run);
    let paths: Vec<String> = serde_json::from_value(header["paths"].clone()).unwrap();
    let row =
        header["tokens"].as_u64().unwrap() as usize * header["dim"].as_u64().unwrap() as usize;
    let index = paths.iter().position(|path| path == key)?;
    Some(
        values[index * row * 4..(index + 1) * row * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

#[test]
fn dit_training_with_mirror_caches_the_mirror_images_whose_captions_allow_it() {
    use textok_studio::train::dit::may_mirror;
    assert!(may_mirror("printer, an icon (device; Oxygen icon theme)"));
    assert!(!may_mirror("go-next, an icon (actions; Breeze icon theme)"));
    assert!(!may_mirror("Backhand index pointing RIGHT"));
    assert!(!may_mirror("flag: Wales"));
    assert!(may_mirror("frightened cat"), "only whole words count");

    let dir = tempfile::tempdir().unwrap();
    let (mut run_config, _) = tiny_dit_run(dir.path(), 3, 4);
    let data = dir.path().join("data");
    std::fs::write(data.join("0.txt"), "a checkerboard").unwrap();
    std::fs::write(data.join("1.txt"), "a checkerboard pointing left").unwrap();
    run_config.mirror = true;
    let run = dir.path().join("mirror");
    new_dit_run(&run, &run_config).unwrap();
    let original = cached_latent_row(&run, "0.png").expect("the image's own row");
    let mirrored = cached_latent_row(&run, "0.png#mirrored").expect("its mirror image's row");
    assert!(
        cached_latent_row(&run, "1.png#mirrored").is_none(),
        "a caption that names a direction is not mirrored"
    );
    assert!(
        cached_latent_row(&run, "2.png#mirrored").is_none(),
        "\"number\": what reads one way is not mirrored"
    );
    assert!(cached_latent_row(&run, "1.png").is_some());
    let (header, _) = read_latent_cache(&run);
    assert_eq!(header["paths"].as_array().unwrap().len(), 5, "{header}");

    // The mirror row is the tokens of the flipped picture: a run without mirror on a folder
    // whose image 0 is flipped caches the same row for it.
    let picture = image::open(data.join("0.png")).unwrap();
    image::imageops::flip_horizontal(&picture)
        .save(data.join("0.png"))
        .unwrap();
    run_config.mirror = false;
    let plain = dir.path().join("plain");
    new_dit_run(&plain, &run_config).unwrap();
    let flipped = cached_latent_row(&plain, "0.png").unwrap();
    assert!(cached_latent_row(&plain, "0.png#mirrored").is_none());
    let largest_gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        largest_gap(&mirrored, &flipped) < 1e-4,
        "mirror row vs the flipped image's: {}",
        largest_gap(&mirrored, &flipped)
    );
    assert!(
        largest_gap(&mirrored, &original) > 1e-3,
        "the checkerboard's mirror image differs from it"
    );
}
