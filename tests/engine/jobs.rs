use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use textok_studio::jobs::{Job, JobState, Progress};

fn counter() -> (Arc<AtomicUsize>, Arc<dyn Fn() + Send + Sync>) {
    let count = Arc::new(AtomicUsize::new(0));
    let inner = count.clone();
    (
        count,
        Arc::new(move || {
            inner.fetch_add(1, Ordering::SeqCst);
        }),
    )
}

#[test]
fn a_job_reports_progress_notifies_and_hands_out_its_result_once() {
    let (notified, notify) = counter();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let mut job = Job::spawn("sum", notify, move |progress, _cancel| {
        progress.report(Progress {
            done: 1,
            total: 2,
            message: "half".into(),
        });
        go_rx.recv().ok();
        Ok(40 + 2)
    });
    // Wait for the first report while the job is held.
    loop {
        match job.poll() {
            JobState::Running(Some(p)) => {
                assert_eq!((p.done, p.total, p.message.as_str()), (1, 2, "half"));
                break;
            }
            JobState::Running(None) => std::thread::yield_now(),
            other => panic!("unexpected {other:?}"),
        }
    }
    go_tx.send(()).unwrap();
    match job.wait() {
        JobState::Finished(Ok(value)) => assert_eq!(value, 42),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        notified.load(Ordering::SeqCst) >= 2,
        "notified on progress and on completion"
    );
}

#[test]
fn cancelling_stops_the_job_and_panics_become_errors() {
    let (_, notify) = counter();
    let job: Job<()> = Job::spawn("forever", notify.clone(), |_, cancel| {
        loop {
            cancel.check()?;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
    job.cancel();
    assert!(matches!(job.wait(), JobState::Cancelled));

    let job: Job<()> = Job::spawn("broken", notify, |_, _| panic!("model exploded"));
    match job.wait() {
        JobState::Finished(Err(error)) => {
            assert!(error.to_string().contains("model exploded"), "{error}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_cancellation_wrapped_by_a_step_still_reads_as_cancelled() {
    use textok_studio::data::dataset::Dataset;
    use textok_studio::jobs::NoProgress;
    let dir = tempfile::tempdir().unwrap();
    image::RgbaImage::new(16, 16)
        .save(dir.path().join("a.png"))
        .unwrap();
    std::fs::write(dir.path().join("a.txt"), "a black square").unwrap();
    let root = dir.path().to_owned();
    let (_, notify) = counter();
    // Loading a dataset wraps the cancellation in its own error type, and the caller adds
    // context: neither may turn a cancel into "failed: cancelled".
    let job: Job<()> = Job::spawn("load", notify, move |_, cancel| {
        cancel.cancel();
        Dataset::load(&root, 16, 5, None, &NoProgress, cancel)
            .map_err(anyhow::Error::from)
            .map_err(|error| error.context("loading the training images"))?;
        Ok(())
    });
    assert!(matches!(job.wait(), JobState::Cancelled));
}
