//! Training: the tokenizer trainer (TexTok and Baseline) and the pieces every trainer shares
//! (learning-rate schedule, deterministic RNG, progress with ETA, JSONL logs).

pub mod dit;
pub mod tokenizer;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Linear warm-up to `peak`, then cosine decay to `peak * min_ratio` at `total` steps.
pub fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step.saturating_sub(warmup)) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}

/// SplitMix64: tiny, fast and fully determined by one `u64`, so a resumed run draws the very
/// same batches and budgets as an uninterrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next_u64() % (high - low + 1) as u64) as usize
    }
}

/// Throughput and time-left estimate over a sliding window of recent steps.
pub struct Eta {
    started: Instant,
    window: std::collections::VecDeque<(Instant, usize)>,
}

impl Default for Eta {
    fn default() -> Self {
        Self::new()
    }
}

impl Eta {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            window: Default::default(),
        }
    }

    pub fn record(&mut self, step: usize) {
        self.record_at(step, Instant::now());
    }

    /// [`Self::record`] with the clock read by the caller.
    pub fn record_at(&mut self, step: usize, at: Instant) {
        self.window.push_back((at, step));
        while self.window.len() > 50 {
            self.window.pop_front();
        }
    }

    /// Leaves `pause` (an evaluation, say) out of the speed: the steps recorded so far are
    /// moved that much later. Without it, the window after each evaluation reads slow, and a
    /// time limit's fitted schedule would shrink and grow back around every evaluation.
    pub fn exclude(&mut self, pause: Duration) {
        for (at, _) in &mut self.window {
            *at += pause;
        }
    }

    /// Steps per second over the window.
    pub fn rate(&self) -> Option<f64> {
        let (first, last) = (self.window.front()?, self.window.back()?);
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        (last.1 > first.1 && seconds > 0.0).then(|| (last.1 - first.1) as f64 / seconds)
    }

    pub fn remaining(&self, step: usize, total: usize) -> Option<Duration> {
        self.rate()
            .map(|rate| Duration::from_secs_f64(total.saturating_sub(step) as f64 / rate))
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A training session's wall-clock limit (`--max-minutes`). Rather than stopping mid-schedule,
/// the run's step count shrinks to what the measured speed reaches by the deadline, so the
/// learning rate still decays to its floor. The speed is re-read every step: another job
/// starting or ending on the same GPU changes it.
#[derive(Debug, Clone, Copy)]
pub struct TimeLimit {
    deadline: Instant,
}

/// The evaluations a session makes on top of its steps, which a time limit must leave room
/// for: one every `every` steps and one at the end, `seconds` each (the mean so far).
#[derive(Debug, Clone, Copy)]
pub struct Evaluations {
    pub every: usize,
    pub seconds: f64,
}

impl TimeLimit {
    /// Steps of a session before its speed is trusted: the first ones compile kernels and
    /// would make the estimate far too slow (the `Eta` window holds 50 steps).
    pub const STEPS_BEFORE_FITTING: usize = 60;

    pub fn new(limit: Duration, now: Instant) -> Self {
        Self {
            deadline: now + limit,
        }
    }

    /// The longest limit: a year. (`Instant + Duration` panics past what the clock can hold.)
    pub const MAX_MINUTES: f64 = 365.0 * 24.0 * 60.0;

    /// A limit of `minutes`: `None` unless it is a positive number up to [`Self::MAX_MINUTES`].
    pub fn duration_from_minutes(minutes: f64) -> Option<Duration> {
        (minutes > 0.0 && minutes <= Self::MAX_MINUTES)
            .then(|| Duration::from_secs_f64(minutes * 60.0))
    }

    /// Whether the deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The step count to aim for after `step` steps (`session_steps` of them in this session)
    /// at `rate` steps per second (evaluations left out: [`Eta::exclude`]), leaving time for
    /// `evaluations`: `requested` until the speed is known, then at most what fits before the
    /// deadline, and `step` (stop now) once it has passed. A deadline that passes before the
    /// speed is known leaves `requested` as it is: the session pauses there, resumable, rather
    /// than end the schedule at full learning rate ([`StepTarget::out_of_time`]).
    pub fn fit(
        &self,
        step: usize,
        requested: usize,
        session_steps: usize,
        rate: Option<f64>,
        evaluations: Option<Evaluations>,
        now: Instant,
    ) -> usize {
        let rate = match rate {
            Some(rate) if session_steps >= Self::STEPS_BEFORE_FITTING && rate > 0.0 => rate,
            _ => return requested,
        };
        if self.expired(now) {
            return step.min(requested);
        }
        let mut left = self.deadline.duration_since(now).as_secs_f64();
        let mut seconds_per_step = 1.0 / rate;
        if let Some(Evaluations { every, seconds }) = evaluations {
            // The closing evaluation, and each step's share of the periodic ones.
            left -= seconds;
            seconds_per_step += seconds / every.max(1) as f64;
        }
        let reachable = step + 1 + (left.max(0.0) / seconds_per_step).floor() as usize;
        reachable.min(requested)
    }
}

/// The step count a training session aims for, re-read after every step: the requested count,
/// or under a time limit the steps that fit (`TimeLimit::fit`).
pub struct StepTarget {
    limit: Option<TimeLimit>,
    requested: usize,
    first_step: usize,
    /// How often the session evaluates, and the evaluations' count and seconds so far.
    evaluate_every: Option<usize>,
    evaluations: (usize, f64),
}

impl StepTarget {
    /// A session starting at `first_step` now, its limit (if any) counted from `now`.
    /// `requested` is the schedule's length: a resumed run's is [`resumed_schedule`].
    pub fn new(
        requested: usize,
        first_step: usize,
        time_limit: Option<Duration>,
        now: Instant,
    ) -> Self {
        Self {
            limit: time_limit.map(|limit| TimeLimit::new(limit, now)),
            requested,
            first_step,
            evaluate_every: None,
            evaluations: (0, 0.0),
        }
    }

    /// A session that evaluates every `every` steps (and at its end): a time limit leaves room
    /// for them once the first one has been timed ([`Self::record_evaluation`]).
    pub fn evaluating_every(self, every: usize) -> Self {
        Self {
            evaluate_every: Some(every.max(1)),
            ..self
        }
    }

    /// An evaluation took `took`.
    pub fn record_evaluation(&mut self, took: Duration) {
        self.evaluations.0 += 1;
        self.evaluations.1 += took.as_secs_f64();
    }

    /// The target after `step` steps, at the speed `eta` measured.
    pub fn after(&self, step: usize, eta: &Eta) -> usize {
        let evaluations = match (self.evaluate_every, self.evaluations) {
            (Some(every), (count, seconds)) if count > 0 => Some(Evaluations {
                every,
                seconds: seconds / count as f64,
            }),
            _ => None,
        };
        match &self.limit {
            Some(limit) => limit.fit(
                step,
                self.requested,
                step - self.first_step,
                eta.rate(),
                evaluations,
                Instant::now(),
            ),
            None => self.requested,
        }
    }

    /// Whether the session must stop short of its target `total`: the time limit has passed
    /// before the speed was measured ([`TimeLimit::fit`] keeps the schedule then). The run is
    /// saved unfinished and a resume goes on with the same schedule.
    pub fn out_of_time(&self, step: usize, total: usize) -> bool {
        step < total
            && self
                .limit
                .is_some_and(|limit| limit.expired(Instant::now()))
    }
}

/// What a session stopped by [`StepTarget::out_of_time`] tells its user.
pub fn out_of_time_message(step: usize, target: &StepTarget) -> String {
    format!(
        "the time limit passed after {} steps of this session, before its speed could be \
         measured ({} steps are needed to fit the schedule to the time): the run stops at \
         step {step}, unfinished; resume it to go on",
        step - target.first_step,
        TimeLimit::STEPS_BEFORE_FITTING
    )
}

/// The schedule a resumed run goes on with: the length its state was saved with (a time limit
/// may have fitted it below the config's `steps`; going back to `steps` would raise the
/// learning rate mid-run, and the Fine-tune pane already shows the run as that long), unless
/// this resume lengthened `steps` past the one the state was trained toward. States saved
/// before the length was recorded go on with `config_steps`.
pub fn resumed_schedule(state: &Path, config_steps: usize) -> anyhow::Result<usize> {
    let metadata = crate::checkpoint::CheckpointFile::read_metadata(state)?;
    let (_, saved_total) = tokenizer::saved_progress_in(&metadata, state)?;
    let state_steps = metadata
        .get("train_config")
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|config| config.get("steps")?.as_u64())
        .map(|steps| steps as usize);
    Ok(match (saved_total, state_steps) {
        (Some(total), Some(steps)) if config_steps <= steps => total.min(config_steps),
        _ => config_steps,
    })
}

/// "1h02m", "4m05s", "12s".
pub fn format_duration(duration: Duration) -> String {
    let s = duration.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Appends one JSON object as a line to `path` (the run's log).
fn append_jsonl(path: &Path, record: &serde_json::Value) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{record}")?;
    file.flush()
}

/// The optimiser and checkpoint settings every trainer shares, checked before any work: a NaN
/// learning rate would only surface as a NaN loss ("lower the learning rate"), and a NaN or
/// infinite checkpoint interval would never save, losing the whole run to a crash.
pub fn check_optimizer_settings(
    learning_rate: f64,
    min_lr_ratio: f64,
    weight_decay: f64,
    grad_clip_norm: f64,
    checkpoint_minutes: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&learning_rate),
        "the learning rate must be between 0 and 1, got {learning_rate}"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&min_lr_ratio),
        "the final learning-rate ratio must be between 0 and 1, got {min_lr_ratio}"
    );
    anyhow::ensure!(
        weight_decay.is_finite() && weight_decay >= 0.0,
        "weight decay must be 0 or more, got {weight_decay}"
    );
    anyhow::ensure!(
        grad_clip_norm.is_finite() && grad_clip_norm > 0.0,
        "the gradient clipping norm must be above 0, got {grad_clip_norm}"
    );
    anyhow::ensure!(
        checkpoint_minutes.is_finite()
            && checkpoint_minutes > 0.0
            && checkpoint_minutes <= TimeLimit::MAX_MINUTES,
        "the checkpoint interval must be above 0 and at most {} minutes, got {checkpoint_minutes}",
        TimeLimit::MAX_MINUTES
    );
    Ok(())
}

/// The warm-up a run of `steps` gets unless told otherwise: 5 % of it, 1..=1000 steps.
pub fn default_warmup(steps: usize) -> usize {
    (steps / 20).clamp(1, 1000)
}

/// A run's settings that resuming must keep (all but the step count, which may grow).
pub trait RunConfig: Clone + PartialEq + serde::Serialize + serde::de::DeserializeOwned {
    /// `(flag, field)`: the command-line flag (clap id) that sets each config field, so that a
    /// refused resume names what to type.
    const FLAG_FIELDS: &'static [(&'static str, &'static str)];
    /// `(steps, warm-up steps)`.
    fn schedule(&self) -> (usize, usize);
    fn with_schedule(&self, steps: usize, warmup_steps: usize) -> Self;

    /// These settings as a continuation of `stored` would have them: its step count, and its
    /// warm-up unless this one was chosen (differs from [`default_warmup`] of this length).
    /// Without the second part, continuing a run with more `--steps` changed the derived
    /// warm-up and was refused as "other settings".
    fn as_continuation_of(&self, stored: &Self) -> Self {
        let (steps, warmup) = self.schedule();
        let (stored_steps, stored_warmup) = stored.schedule();
        let warmup = if warmup == default_warmup(steps) {
            stored_warmup
        } else {
            warmup
        };
        self.with_schedule(stored_steps, warmup)
    }
}

/// Fails unless `run_dir` holds a training state to resume. Said before anything is written
/// there: a mistyped run folder would otherwise be left behind, new and empty.
pub fn ensure_resumable(run_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        run_dir.join(TRAINING_STATE_FILE).is_file(),
        "{}: nothing to resume (no {TRAINING_STATE_FILE}); check the run folder",
        run_dir.display()
    );
    Ok(())
}

/// Claims `run_dir` for one training at a time (an OS file lock on `train.lock`, released when
/// the trainer ends, even by a crash): two trainers on one run, say the same fine-tune resumed
/// in two windows, would write over each other's checkpoints. `None` where the file system
/// cannot lock. Hold the file for the whole run. A resume (`resume`) needs a state there
/// already ([`ensure_resumable`]); a new run's folder is made.
pub fn claim_run_dir(run_dir: &Path, resume: bool) -> anyhow::Result<Option<std::fs::File>> {
    use anyhow::Context;
    if resume {
        ensure_resumable(run_dir)?;
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("{}: cannot create run folder", run_dir.display()))?;
    let claim = crate::files::try_lock_file(&run_dir.join("train.lock")).map_err(
        |crate::files::LockBusy| {
            anyhow::anyhow!(
                "{}: another training is running in this run folder (in this window, another \
                 window or a terminal); wait for it to end or choose another folder",
                run_dir.display()
            )
        },
    )?;
    // No other trainer writes here now: what an interrupted one left is swept.
    crate::files::remove_stale_temp_files(run_dir, std::time::Duration::from_secs(3600));
    Ok(claim)
}

/// A run folder's training state (model, EMA, optimizer, RNG): what `--resume` continues.
pub const TRAINING_STATE_FILE: &str = "state.safetensors";

/// The settings a run in `run_dir` continues with: `requested` for a new run (refusing a folder
/// that already holds one), or the stored ones when resuming (refusing changed settings; the
/// step count may only grow). Writes them to `config.json`.
pub fn resolve_run_config<C: RunConfig>(
    run_dir: &Path,
    requested: &C,
    resume: bool,
) -> anyhow::Result<C> {
    use anyhow::Context;
    let (state, config_path) = (
        run_dir.join(TRAINING_STATE_FILE),
        run_dir.join("config.json"),
    );
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("{}: cannot create run folder", run_dir.display()))?;
    let config = if resume {
        ensure_resumable(run_dir)?;
        let bytes = std::fs::read(&config_path)
            .with_context(|| format!("{}: cannot read", config_path.display()))?;
        let stored: C = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: not a training config of this kind",
                config_path.display()
            )
        })?;
        let differences = differing_settings(
            &serde_json::to_value(requested.as_continuation_of(&stored))?,
            &serde_json::to_value(&stored)?,
            C::FLAG_FIELDS,
        );
        anyhow::ensure!(
            differences.is_empty(),
            "{}: the run was started with other settings; resume with the same ones (only \
             --steps may change, to more): {}",
            run_dir.display(),
            differences.join(", ")
        );
        let (stored_steps, warmup) = stored.schedule();
        let requested_steps = requested.schedule().0;
        anyhow::ensure!(
            requested_steps >= stored_steps,
            "{}: the run's schedule is {stored_steps} steps; a resume can lengthen it, not \
             shorten it (given: --steps {requested_steps}); leave --steps out to keep it",
            run_dir.display()
        );
        stored.with_schedule(requested_steps, warmup)
    } else {
        anyhow::ensure!(
            !state.exists(),
            "{}: already holds a run; pass --resume to continue it or choose another folder",
            run_dir.display()
        );
        requested.clone()
    };
    crate::files::write_atomic(
        &config_path,
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )
    .with_context(|| format!("{}: cannot write", config_path.display()))?;
    Ok(config)
}

/// The settings in which a resume request differs from the run's stored ones, as `--flag stored
/// (given: requested)` (the field's name where no flag sets it), so that the refusal says what
/// to type. Two paths that name the same file or folder (`data` and `./data`) do not differ.
fn differing_settings(
    requested: &serde_json::Value,
    stored: &serde_json::Value,
    flag_fields: &[(&str, &str)],
) -> Vec<String> {
    use serde_json::Value;
    let (Value::Object(requested), Value::Object(stored)) = (requested, stored) else {
        return if requested == stored {
            Vec::new()
        } else {
            vec![format!("{stored} (given: {requested})")]
        };
    };
    let mut names: Vec<&String> = stored.keys().chain(requested.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (given, had) = (requested.get(name), stored.get(name));
            let same = match (given, had) {
                (Some(Value::String(a)), Some(Value::String(b))) => {
                    a == b || crate::files::same_file(Path::new(a), Path::new(b))
                }
                _ => given == had,
            };
            let flag = flag_fields
                .iter()
                .find(|(_, field)| field == name)
                .map(|(flag, _)| *flag);
            // --no-text sets `text_conditioning` to its opposite.
            let inverted = flag == Some("no_text");
            let show = |value: Option<&Value>| match value {
                Some(Value::Bool(on)) if inverted => (!on).to_string(),
                Some(value) => value.to_string(),
                None => "none".to_owned(),
            };
            let label = flag.map_or_else(
                || name.clone(),
                |flag| format!("--{}", flag.replace('_', "-")),
            );
            (!same).then(|| format!("{label} {} (given: {})", show(had), show(given)))
        })
        .collect()
}

/// Loads a training dataset through the shared decode cache and checks the training split.
pub fn load_training_data(
    data: &Path,
    size: u32,
    validation_percent: u32,
    cancel: &crate::jobs::CancelToken,
) -> anyhow::Result<crate::data::dataset::Dataset> {
    let cache = tokenizer::cache_file(data, size);
    let dataset = crate::data::dataset::Dataset::load(
        data,
        size,
        validation_percent,
        cache.as_deref(),
        &crate::jobs::NoProgress,
        cancel,
    )?;
    anyhow::ensure!(
        !dataset.split(crate::data::dataset::Split::Train).is_empty(),
        "{}: no training images after the split",
        data.display()
    );
    Ok(dataset)
}

/// Reports a finished step to the observer and (every 10 steps and the first) to the JSONL log.
pub fn report_step(
    eta: &mut Eta,
    numbers: tokenizer::StepReport,
    batch: usize,
    elapsed_seconds: f64,
    observer: &dyn tokenizer::TrainObserver,
    log: &Path,
) {
    eta.record(numbers.step);
    let report = tokenizer::StepReport {
        images_per_second: eta.rate().map(|r| r * batch as f64),
        eta_seconds: eta
            .remaining(numbers.step, numbers.total)
            .map(|d| d.as_secs_f64()),
        ..numbers
    };
    observer.on_step(&report);
    if report.step.is_multiple_of(10) || report.step == 1 {
        log_event(
            log,
            &serde_json::json!({"event": "step", "step": report.step, "loss": report.loss, "budget": report.budget,
                "lr": report.lr, "images_per_second": report.images_per_second, "elapsed_s": elapsed_seconds}),
        );
    }
}

/// Appends an event to a run's JSONL log; a failed write is a warning, not an error: the log is
/// for reading along (a spreadsheet may hold it locked on Windows), and stopping the run over it
/// would lose every step since the last checkpoint.
pub fn log_event(log: &Path, record: &serde_json::Value) {
    // Once per log file, not every tenth step.
    static WARNED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    if let Err(error) = append_jsonl(log, record) {
        let mut warned = WARNED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !warned.iter().any(|path| path == log) {
            warned.push(log.to_owned());
            tracing::warn!(
                "{}: cannot append to the training log ({error}); training goes on without it",
                log.display()
            );
        }
    }
}
