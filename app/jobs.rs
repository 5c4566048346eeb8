//! What long-running engine work (loading, reconstruction, training) needs from its caller:
//! a way to report progress and a flag to stop early. The GUI's job runner and the CLI both
//! provide these, so the pipeline functions never know which one is driving them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared "please stop" flag. Cloning shares the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancellation was requested; call between units of work.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

/// The work was stopped on request; not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// One progress report: `done` of `total` units, with a short human description of the step.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub message: String,
}

/// Receives progress reports; must be cheap because it is called from the worker thread.
pub trait ProgressSink: Send + Sync {
    fn report(&self, progress: Progress);
}

/// Ignores progress (tests, quick calls).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn report(&self, _progress: Progress) {}
}

impl<F: Fn(Progress) + Send + Sync> ProgressSink for F {
    fn report(&self, progress: Progress) {
        self(progress)
    }
}

/// The state of a background job, as seen from the thread that started it.
#[derive(Debug)]
pub enum JobState<T> {
    /// Still working; the latest progress report, if any.
    Running(Option<Progress>),
    /// Finished with a result (`Err` for failures, including a panic inside the job).
    Finished(anyhow::Result<T>),
    /// Stopped on request.
    Cancelled,
    /// The outcome was already handed out by an earlier poll.
    Collected,
}

struct Shared<T> {
    progress: Option<Progress>,
    outcome: Option<anyhow::Result<T>>,
}

/// A job running on its own thread: long work (model loading, reconstruction, generation,
/// training) never blocks the thread that shows the UI. `notify` is called after every progress
/// report and when the job ends (the GUI passes egui's `request_repaint`).
pub struct Job<T> {
    cancel: CancelToken,
    shared: Arc<std::sync::Mutex<Shared<T>>>,
    taken: bool,
}

impl<T: Send + 'static> Job<T> {
    pub fn spawn(
        name: &str,
        notify: Arc<dyn Fn() + Send + Sync>,
        work: impl FnOnce(&dyn ProgressSink, &CancelToken) -> anyhow::Result<T> + Send + 'static,
    ) -> Self {
        let cancel = CancelToken::new();
        let shared = Arc::new(std::sync::Mutex::new(Shared {
            progress: None,
            outcome: None,
        }));
        let (job_cancel, job_shared) = (cancel.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("job: {name}"))
            .spawn(move || {
                let sink_shared = job_shared.clone();
                let sink_notify = notify.clone();
                let sink = move |progress: Progress| {
                    lock(&sink_shared).progress = Some(progress);
                    sink_notify();
                };
                // A panic inside the work must become an error message, not a dead app.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    work(&sink, &job_cancel)
                }))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    Err(anyhow::anyhow!("internal error: {message}"))
                });
                lock(&job_shared).outcome = Some(outcome);
                notify();
            });
        if let Err(error) = spawned {
            lock(&shared).outcome = Some(Err(anyhow::anyhow!(
                "cannot start a worker thread: {error}"
            )));
        }
        Self {
            cancel,
            shared,
            taken: false,
        }
    }

    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The job's state. The outcome is handed out once: later polls answer `Collected`.
    pub fn poll(&mut self) -> JobState<T> {
        let mut shared = lock(&self.shared);
        let state = match shared.outcome.take() {
            // Anywhere in the chain: a step may wrap the cancellation in its own error.
            Some(Err(error)) if error.chain().any(|cause| cause.is::<Cancelled>()) => {
                JobState::Cancelled
            }
            Some(outcome) => JobState::Finished(outcome),
            None if self.taken => return JobState::Collected,
            None => return JobState::Running(shared.progress.clone()),
        };
        self.taken = true;
        state
    }

    /// Blocks until the job ends (tests and the CLI).
    pub fn wait(mut self) -> JobState<T> {
        loop {
            match self.poll() {
                JobState::Running(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                done => return done,
            }
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
