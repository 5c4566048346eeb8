//! The desktop app, driven through egui_kittest with tiny models: every pane, persistence,
//! errors, the WGSL views and responsiveness while jobs run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eframe::egui;
use eframe::egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use textok_studio::checkpoint::StoredPrecision;
use textok_studio::device::DeviceChoice;
use textok_studio::gui::engines::ShippedModels;
use textok_studio::gui::finetune::list_runs;
use textok_studio::gui::generate::{GalleryAction, save_generation};
use textok_studio::gui::library::import_paths;
use textok_studio::gui::state::{self, LibraryItem, PersistedState};
use textok_studio::gui::{Pane, StartOptions, StudioApp};
use textok_studio::jobs::CancelToken;
use textok_studio::model::dit::SampleSettings;
use textok_studio::pipeline::GeneratedImage;

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Tiny TexTok, Baseline and DiT checkpoints standing in for the shipped models.
struct Fixture {
    dir: tempfile::TempDir,
    shipped: ShippedModels,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let device = burn::tensor::Device::flex();
    let save_tokenizer = |text: bool, seed: u64, name: &str| {
        let config = textok_studio::model::textok::TexTokConfig::tiny(text);
        let model =
            textok_studio::device::init_module(&device, Some(seed), || config.init(&device));
        let path = dir.path().join(name);
        model.save(&config, &path, StoredPrecision::F16).unwrap();
        path
    };
    let textok = save_tokenizer(true, 31, "textok.safetensors");
    let baseline = save_tokenizer(false, 32, "baseline.safetensors");
    // Trained to 128 of its 256 tokens, as a focused DiT is: the Generate slider stops there.
    let dit_config = textok_studio::model::dit::DitConfig {
        trained_max_budget: Some(128),
        ..textok_studio::model::dit::DitConfig::tiny()
    };
    let mut dit =
        textok_studio::device::init_module(&device, Some(77), || dit_config.init(&device));
    {
        // A non-zero output layer, so generated images depend on the seed.
        let _seeded = textok_studio::device::seeded(&device, 77);
        dit.output.weight = burn::module::Param::from_tensor(burn::tensor::Tensor::random(
            [32, 8],
            burn::tensor::Distribution::Normal(0.0, 0.5),
            &device,
        ));
    }
    let dit_path = dir.path().join("dit.safetensors");
    dit.save(&dit_config, &dit_path, StoredPrecision::F16)
        .unwrap();
    Fixture {
        shipped: ShippedModels {
            text_encoder_dir: repo_path("models/text-encoder"),
            textok,
            // Missing unless a test writes it: Generate then decodes with `textok`.
            generation_decoder: dir.path().join("textok-generate.safetensors"),
            baseline,
            dit: dit_path,
            effnet: repo_path("models/efficientnet-lite0/model.safetensors"),
        },
        dir,
    }
}

impl Fixture {
    fn options(&self) -> StartOptions {
        let mut options = StartOptions::new(self.dir.path().join("data"));
        options.shipped = self.shipped.clone();
        options
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

fn harness(options: StartOptions) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| StudioApp::new(cc, options))
}

/// The app on the fixture's models, opened on `pane`.
fn harness_on(fixture: &Fixture, pane: Pane) -> Harness<'static, StudioApp> {
    let mut options = fixture.options();
    options.pane = Some(pane);
    harness(options)
}

fn wgpu_harness(options: StartOptions) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size(egui::vec2(1100.0, 640.0))
        .wgpu()
        .build_eframe(move |cc| StudioApp::new(cc, options))
}

/// The error notices the app shows.
fn error_notices(app: &StudioApp) -> Vec<String> {
    app.app.notices.errors().map(str::to_owned).collect()
}

/// Every notice the app shows, errors and others.
fn all_notices(app: &StudioApp) -> Vec<String> {
    app.app.notices.all().map(str::to_owned).collect()
}

/// Fails unless some notice is `wanted`, listing the notices there are.
fn assert_notice(app: &StudioApp, wanted: impl Fn(&str) -> bool) {
    let notices: Vec<&str> = app.app.notices.all().collect();
    assert!(notices.iter().any(|m| wanted(m)), "{notices:?}");
}

/// Steps frames (with real time passing, since jobs run on threads) until `done`.
fn wait_until(
    harness: &mut Harness<'_, StudioApp>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&StudioApp) -> bool,
) {
    let started = Instant::now();
    loop {
        harness.step();
        if done(harness.state()) {
            return;
        }
        let errors = error_notices(harness.state());
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {what}; errors: {errors:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Steps frames until an error notice holds `text`.
fn wait_for_error(harness: &mut Harness<'_, StudioApp>, text: &str) {
    wait_until(harness, text, Duration::from_secs(60), |app| {
        app.app.notices.errors().any(|e| e.contains(text))
    });
}

fn idle(app: &StudioApp) -> bool {
    !app.busy()
}

/// Steps frames until no background work runs (at most a minute).
fn wait_idle(harness: &mut Harness<'_, StudioApp>, what: &str) {
    wait_until(harness, what, Duration::from_secs(60), idle);
}

/// The Settings pane's adapter list replaces its "looking for GPUs" line when it arrives,
/// moving everything below: a click placed before then can miss.
fn wait_for_the_adapter_list(harness: &mut Harness<'_, StudioApp>) {
    wait_until(
        harness,
        "the adapter list",
        Duration::from_secs(60),
        |app| app.settings.settled(),
    );
}

fn sample(name: &str) -> PathBuf {
    repo_path(&format!("assets/samples/{name}.png"))
}

/// Puts the named sample images into the Library with these captions.
fn add_samples(harness: &mut Harness<'_, StudioApp>, samples: &[(&str, &str)]) {
    for (name, caption) in samples {
        harness.state_mut().app.state.library.push(LibraryItem {
            path: sample(name),
            caption: (*caption).into(),
        });
    }
}

/// The app on the Fine-tune pane with `samples` in the Library and the form's steps and batch.
fn fine_tune_harness(
    fixture: &Fixture,
    samples: &[(&str, &str)],
    steps: usize,
    batch: usize,
) -> Harness<'static, StudioApp> {
    let mut harness = harness_on(fixture, Pane::FineTune);
    add_samples(&mut harness, samples);
    {
        let form = &mut harness.state_mut().finetune.form;
        form.steps = steps;
        form.batch = batch;
    }
    harness.step();
    harness
}

#[test]
fn a_cancelled_import_stops_inside_a_folders_scan() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("pictures");
    std::fs::create_dir_all(folder.join("nested")).unwrap();
    std::fs::copy(sample("apple"), folder.join("nested/apple.png")).unwrap();
    std::fs::write(folder.join("nested/apple.txt"), "a red apple").unwrap();
    let cancel = CancelToken::new();
    assert_eq!(
        textok_studio::data::dataset::scan_cancellable(&folder, &cancel)
            .unwrap()
            .0
            .len(),
        1
    );
    cancel.cancel();
    // The folder's own scan stops (not only the loop over the dropped paths).
    let scanned = textok_studio::data::dataset::scan_cancellable(&folder, &cancel);
    assert!(
        matches!(
            scanned,
            Err(textok_studio::data::dataset::DatasetError::Cancelled(_))
        ),
        "{scanned:?}"
    );
    let mut library = Vec::new();
    let report =
        textok_studio::gui::library::import_paths_cancellable(&mut library, &[folder], &cancel);
    assert!(library.is_empty(), "{library:?}");
    assert_eq!(report.added, 0);
}

#[test]
fn import_takes_files_and_folders_with_their_captions_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("pictures");
    std::fs::create_dir_all(folder.join("nested")).unwrap();
    std::fs::copy(sample("apple"), folder.join("apple.png")).unwrap();
    std::fs::write(folder.join("apple.txt"), "a red apple\n").unwrap();
    std::fs::copy(sample("apple"), folder.join("nested/plain.png")).unwrap();
    std::fs::write(folder.join("notes.md"), "not an image").unwrap();
    let loose = dir.path().join("loose.png");
    std::fs::copy(sample("apple"), &loose).unwrap();
    std::fs::write(dir.path().join("loose.txt"), "a loose apple").unwrap();

    let mut library = Vec::new();
    let report = import_paths(
        &mut library,
        &[
            folder.clone(),
            loose.clone(),
            dir.path().join("missing.png"),
            folder.join("notes.md"),
        ],
    );
    assert_eq!(report.added, 3, "{report:?}");
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    fn caption_of(library: &[LibraryItem], name: &str) -> Option<String> {
        library
            .iter()
            .find(|item| item.path.ends_with(name))
            .map(|item| item.caption.clone())
    }
    assert_eq!(
        caption_of(&library, "apple.png").as_deref(),
        Some("a red apple")
    );
    assert_eq!(caption_of(&library, "plain.png").as_deref(), Some(""));
    assert_eq!(
        caption_of(&library, "loose.png").as_deref(),
        Some("a loose apple")
    );
    assert!(library.iter().all(|item| item.path.is_absolute()));

    // Importing again adds nothing.
    let again = import_paths(&mut library, &[folder]);
    assert_eq!((again.added, again.already_present), (0, 2));

    // captions.jsonl wins over sidecars.
    let indexed = dir.path().join("indexed");
    std::fs::create_dir_all(&indexed).unwrap();
    std::fs::copy(sample("apple"), indexed.join("x.png")).unwrap();
    std::fs::write(
        indexed.join("captions.jsonl"),
        "{\"file\": \"x.png\", \"caption\": \"from the index\"}\n",
    )
    .unwrap();
    // An image the index does not list comes in uncaptioned, like a sidecar folder's.
    std::fs::copy(sample("apple"), indexed.join("unlisted.png")).unwrap();
    let report = import_paths(&mut library, &[indexed]);
    assert_eq!(report.added, 2, "{:?}", report.skipped);
    assert_eq!(
        caption_of(&library, "x.png").as_deref(),
        Some("from the index")
    );
    assert_eq!(caption_of(&library, "unlisted.png").as_deref(), Some(""));
}

#[test]
fn a_file_dialog_answered_while_another_pane_is_shown_is_acted_on() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Generate);
    // The dialog does not hold the window: Add images… was pressed in the Library, then the
    // Generate pane was chosen, and now the dialog is answered.
    let (answer, dialog) = std::sync::mpsc::channel();
    harness.state_mut().library.dialog = Some(dialog);
    harness.step();
    answer.send(vec![sample("apple")]).unwrap();
    wait_until(
        &mut harness,
        "the picked image in the Library",
        Duration::from_secs(30),
        |app| app.app.state.library.len() == 1,
    );
    assert_eq!(harness.state().pane, Pane::Generate);
    assert!(harness.state().library.dialog.is_none());
}

#[test]
fn adding_a_folder_again_fills_missing_captions_and_selects_and_shows_the_import() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Library);
    let folder = fixture.dir.path().join("pictures");
    std::fs::create_dir_all(&folder).unwrap();
    let (a, b) = (folder.join("a.png"), folder.join("b.png"));
    std::fs::copy(sample("apple"), &a).unwrap();
    std::fs::copy(sample("penguin"), &b).unwrap();
    let import = |harness: &mut Harness<'static, StudioApp>, wanted: &str| {
        harness
            .state_mut()
            .app
            .import(std::slice::from_ref(&folder));
        wait_until(harness, wanted, Duration::from_secs(30), |app| {
            app.app.notices.all().any(|m| m.contains(wanted))
        });
    };
    import(&mut harness, "added 2 image(s)");
    let caption_of = |harness: &Harness<'static, StudioApp>, path: &std::path::Path| {
        let library = &harness.state().app.state.library;
        library
            .iter()
            .find(|item| item.path == path)
            .unwrap()
            .caption
            .clone()
    };
    assert_eq!(caption_of(&harness, &b), "");
    // Captions written afterwards, one for an image captioned in the app meanwhile; and a
    // filter that hides both.
    std::fs::write(folder.join("a.txt"), "from the sidecar").unwrap();
    std::fs::write(folder.join("b.txt"), "a penguin").unwrap();
    let studio = harness.state_mut();
    studio
        .app
        .state
        .library
        .iter_mut()
        .find(|item| item.path == a)
        .unwrap()
        .caption = "typed in the app".into();
    studio.app.state.selected = None;
    studio.app.library_filter.words = "zebra".into();
    import(&mut harness, "1 of them now captioned");
    assert_eq!(caption_of(&harness, &b), "a penguin");
    assert_eq!(
        caption_of(&harness, &a),
        "typed in the app",
        "a caption is never replaced"
    );
    // The import is selected, and the filter that hid it is cleared.
    assert_eq!(
        harness.state().app.state.selected.as_deref(),
        Some(a.as_path())
    );
    assert!(!harness.state().app.library_filter.active());
}

#[test]
fn a_typed_or_pasted_path_adds_images_where_no_dialog_or_drop_works() {
    use textok_studio::gui::library::paths_from_text;
    assert_eq!(
        paths_from_text("  /a/b c.png \n\n'/quoted.png'\nfile:///x/my%20pic.png\n"),
        [
            PathBuf::from("/a/b c.png"),
            PathBuf::from("/quoted.png"),
            PathBuf::from("/x/my pic.png")
        ]
    );
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Library);
    harness.state_mut().library.typed_paths = format!("\"{}\"", sample("apple").display());
    harness.step();
    harness.get_by_label("Add path").click();
    wait_until(
        &mut harness,
        "the typed image",
        Duration::from_secs(30),
        |app| app.app.state.library.len() == 1,
    );
    assert!(harness.state().library.typed_paths.is_empty());
}

#[test]
fn a_caption_editor_says_so_when_the_token_counter_cannot_load() {
    let fixture = fixture();
    let mut options = fixture.options();
    options.shipped.text_encoder_dir = fixture.dir.path().join("no-text-encoder");
    options.open = vec![sample("apple")];
    options.pane = Some(Pane::Library);
    let mut harness = harness(options);
    wait_for_error(&mut harness, "Cannot count caption tokens");
    harness.step();
    assert!(
        harness
            .query_by_label_contains("token count unavailable")
            .is_some()
    );
    assert!(harness.query_by_label_contains("counting tokens").is_none());
}

#[test]
fn state_round_trips_and_a_damaged_file_is_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let mut saved = PersistedState::default();
    saved.library.push(LibraryItem {
        path: "/pictures/a.png".into(),
        caption: "a cat".into(),
    });
    saved.remember_prompt("a dog on a skateboard");
    state::save(dir.path(), &saved).unwrap();
    let loaded = state::load(dir.path());
    assert!(loaded.problem.is_none());
    assert_eq!(loaded.state, saved);

    std::fs::write(dir.path().join(state::STATE_FILE), b"{ not json").unwrap();
    let damaged = state::load(dir.path());
    assert_eq!(damaged.state, PersistedState::default());
    let problem = damaged.problem.expect("a damaged file is reported");
    assert!(problem.contains("damaged"), "{problem}");
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("unreadable"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept aside");
    assert!(damaged.may_save);

    // A state file that cannot be read at all (here: a folder in its place) is never saved over.
    let odd = tempfile::tempdir().unwrap();
    std::fs::create_dir(odd.path().join(state::STATE_FILE)).unwrap();
    std::fs::write(odd.path().join(state::STATE_FILE).join("keep"), b"x").unwrap();
    let unreadable = state::load(odd.path());
    assert!(unreadable.problem.is_some() && !unreadable.may_save);
    let mut saver = state::StateSaver::new(odd.path().to_owned(), &unreadable.state, false);
    assert!(!saver.tick(&saved, true).unwrap(), "nothing is written");
    assert!(odd.path().join(state::STATE_FILE).join("keep").exists());

    // A write that fails (a file where the data folder should be) is reported once and not
    // pending again until the state changes, so an idle app does not retry every second.
    let blocked = dir.path().join("not-a-folder");
    std::fs::write(&blocked, b"x").unwrap();
    let mut saver = state::StateSaver::new(blocked, &PersistedState::default(), true);
    assert!(saver.pending(&saved));
    // The file is written on a thread of its own: a later tick finds the failure.
    let started = Instant::now();
    while saver.tick(&saved, false).is_ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "no error");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!saver.pending(&saved));
    let mut changed = saved.clone();
    changed.remember_prompt("a cat on a mat");
    assert!(saver.pending(&changed));

    // A write in the background lands, and the exit's save waits for the disk.
    let good = tempfile::tempdir().unwrap();
    let mut saver =
        state::StateSaver::new(good.path().to_owned(), &PersistedState::default(), true);
    let started = Instant::now();
    while !saver.tick(&saved, false).unwrap() {
        assert!(started.elapsed() < Duration::from_secs(10), "never written");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(state::load(good.path()).state, saved);
    assert!(!saver.pending(&saved));
    saver.tick(&changed, false).unwrap();
    let mut last = changed.clone();
    last.remember_prompt("the last words");
    assert!(saver.tick(&last, true).unwrap());
    assert_eq!(state::load(good.path()).state, last);
    assert!(!saver.pending(&last));
}

#[test]
fn library_caption_edits_show_token_counts_and_survive_a_restart() {
    let fixture = fixture();
    let mut options = fixture.options();
    options.open = vec![sample("apple")];
    options.pane = Some(Pane::Library);
    let mut harness = harness(options);
    wait_until(
        &mut harness,
        "the token counter",
        Duration::from_secs(30),
        |app| app.app.token_counter.is_ready(),
    );
    harness.get_by_role(Role::MultilineTextInput).focus();
    harness.step();
    harness
        .get_by_role(Role::MultilineTextInput)
        .type_text(" with a long green leaf");
    harness.step();
    harness.step();
    let caption = harness.state().app.state.library[0].caption.clone();
    assert!(caption.ends_with("with a long green leaf"), "{caption}");
    assert!(harness.query_by_label_contains("text tokens").is_some());
    assert!(harness.query_by_label_contains("No caption yet").is_none());
    // A blank one is pointed out.
    harness.state_mut().app.state.library[0].caption = "  ".into();
    harness.step();
    assert!(harness.query_by_label_contains("No caption yet").is_some());

    // An endless caption is flagged as truncated.
    harness.state_mut().app.state.library[0].caption = "very ".repeat(100);
    harness.step();
    assert!(
        harness
            .query_by_label_contains("only the first 32 are read")
            .is_some()
    );
    harness.state_mut().app.state.library[0].caption = caption.clone();

    // The state file is written within a second of the change.
    std::thread::sleep(Duration::from_millis(1100));
    harness.step();
    drop(harness);
    let restored = state::load(&fixture.data_dir());
    assert_eq!(restored.state.library.len(), 1);
    assert_eq!(restored.state.library[0].caption, caption);

    let mut again = self::harness(fixture.options());
    again.step();
    assert_eq!(again.state().app.state.library[0].caption, caption);
    assert_eq!(
        again.state().pane,
        Pane::Compare,
        "a non-empty library opens on Compare"
    );
}

#[test]
fn a_second_window_on_the_same_data_folder_says_so_and_saves_nothing() {
    let fixture = fixture();
    let mut first = harness(fixture.options());
    first.step();
    let mut options = fixture.options();
    options.open = vec![sample("apple")];
    let mut second = harness(options);
    second.step();
    let errors = error_notices(second.state());
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Another TexTok Studio window")),
        "{errors:?}"
    );
    assert_eq!(second.state().app.state.library.len(), 1, "it still works");
    std::thread::sleep(Duration::from_millis(1100));
    second.step();
    drop(second);
    assert!(
        state::load(&fixture.data_dir()).state.library.is_empty(),
        "the second window did not save over the first one's state"
    );
    assert_eq!(first.state().app.notices.errors().count(), 0);
    // Once the first window is gone, the folder is free again.
    drop(first);
    let mut third = harness(fixture.options());
    third.step();
    assert_eq!(third.state().app.notices.errors().count(), 0);
}

#[test]
fn a_removed_library_item_comes_back_with_its_caption_on_undo() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Library);
    let items: Vec<LibraryItem> = ["apple", "penguin", "lizard"]
        .into_iter()
        .map(|name| LibraryItem {
            path: sample(name),
            caption: format!("a typed caption for the {name}"),
        })
        .collect();
    harness.state_mut().app.state.library = items.clone();
    harness.state_mut().app.state.selected = Some(sample("penguin"));
    // Let the token counter and the thumbnails arrive first: each moves the details panel's
    // buttons, and a click is delivered where the button was in the previous frame.
    wait_until(
        &mut harness,
        "the token counter",
        Duration::from_secs(60),
        |app| app.app.token_counter.is_ready(),
    );
    wait_until(
        &mut harness,
        "the thumbnails",
        Duration::from_secs(60),
        |app| {
            items
                .iter()
                .all(|item| app.app.thumbnails.arrived(&item.path))
        },
    );
    harness.step();
    harness.get_by_label("Remove from library").click();
    harness.step();
    assert_eq!(harness.state().app.state.library.len(), 2);
    harness.step();
    harness.get_by_label_contains("Undo remove").click();
    harness.step();
    assert_eq!(
        harness.state().app.state.library,
        items,
        "back in its place"
    );
    assert_eq!(harness.state().app.state.selected, Some(sample("penguin")));
    harness.step();
    assert!(harness.query_by_label_contains("Undo remove").is_none());

    // Removed, then added again (say, its folder dropped in) before the undo: the item stays
    // where it came back, and its caption, which the new one lacks, is not lost.
    let remove_and_add_again = |harness: &mut Harness<'static, StudioApp>, caption: &str| {
        harness.state_mut().app.state.selected = Some(sample("penguin"));
        harness.step();
        harness.get_by_label("Remove from library").click();
        harness.step();
        harness.state_mut().app.state.library.push(LibraryItem {
            path: sample("penguin"),
            caption: caption.into(),
        });
        harness.step();
        harness.get_by_label_contains("Undo remove").click();
        harness.step();
    };
    remove_and_add_again(&mut harness, "");
    let library = harness.state().app.state.library.clone();
    assert_eq!(library.len(), 3);
    assert_eq!(library[2].path, sample("penguin"));
    assert_eq!(library[2].caption, "a typed caption for the penguin");
    // One added again with a caption of its own keeps it; the removed one is quoted.
    remove_and_add_again(&mut harness, "its own caption");
    let library = harness.state().app.state.library.clone();
    assert_eq!(library[2].caption, "its own caption");
    let quoted = |m: &str| m.contains("the removed caption was: a typed caption for the penguin");
    assert_notice(harness.state(), quoted);
    // The quote may be the caption's only copy: it stays after information has faded.
    let later = Instant::now() + textok_studio::gui::Notices::FADE_AFTER * 2;
    let notices = &mut harness.state_mut().app.notices;
    notices.info("a passing remark");
    notices.drop_faded(later);
    assert!(!notices.all().any(|m| m == "a passing remark"));
    assert_notice(harness.state(), quoted);
}

/// Lets the once-a-second sidecar write come due and waits until the batch is written.
fn write_due_sidecars(harness: &mut Harness<'static, StudioApp>) {
    std::thread::sleep(Duration::from_millis(1100));
    harness.step();
    wait_until(harness, "the sidecar writes", Duration::from_secs(30), idle);
}

#[test]
fn sidecar_captions_are_written_when_asked_for() {
    let fixture = fixture();
    let image = fixture.dir.path().join("pear.png");
    std::fs::copy(sample("apple"), &image).unwrap();
    let mut options = fixture.options();
    options.open = vec![image.clone()];
    options.pane = Some(Pane::Library);
    let mut harness = harness(options);
    harness.step();
    // An edit while sidecars are off is not written ...
    let app = &mut harness.state_mut().app;
    app.state.library[0].caption = "a ripe pear".into();
    app.caption_edited(&image);
    write_due_sidecars(&mut harness);
    assert!(!image.with_extension("txt").exists());
    // ... until they are turned on.
    harness
        .get_by_label("Save captions as sidecar .txt")
        .click();
    harness.step();
    assert!(harness.state().app.state.settings.save_sidecars);
    write_due_sidecars(&mut harness);
    assert_eq!(
        std::fs::read_to_string(image.with_extension("txt")).unwrap(),
        "a ripe pear"
    );
    harness.state_mut().app.state.library[0].caption.clear();
    harness.get_by_role(Role::MultilineTextInput).focus();
    harness.step();
    harness
        .get_by_role(Role::MultilineTextInput)
        .type_text("a green pear");
    harness.step();
    write_due_sidecars(&mut harness);
    assert_eq!(
        std::fs::read_to_string(image.with_extension("txt")).unwrap(),
        "a green pear"
    );

    // pear.jpg next to pear.png would share pear.txt: neither edit is written, and it says why.
    let jpeg = fixture.dir.path().join("pear.jpg");
    image::open(sample("apple"))
        .unwrap()
        .to_rgb8()
        .save(&jpeg)
        .unwrap();
    let app = &mut harness.state_mut().app;
    let report = textok_studio::gui::library::import_paths(
        &mut app.state.library,
        std::slice::from_ref(&jpeg),
    );
    assert_eq!(report.added, 1);
    let item = app.state.library.iter_mut().find(|i| i.path == jpeg);
    item.expect("imported").caption = "a yellow pear".into();
    app.caption_edited(&jpeg);
    write_due_sidecars(&mut harness);
    assert_eq!(
        std::fs::read_to_string(image.with_extension("txt")).unwrap(),
        "a green pear"
    );
    assert!(
        harness
            .state()
            .app
            .notices
            .errors()
            .any(|e| e.contains("caption file of both")),
        "the clash is reported"
    );
    // Both edited in one batch: two problems, one notice (a read-only folder of hundreds of
    // images would otherwise post hundreds).
    let app = &mut harness.state_mut().app;
    for (path, caption) in [(&image, "a pear, again"), (&jpeg, "a yellow pear, again")] {
        let item = app.state.library.iter_mut().find(|i| &i.path == path);
        item.expect("in the library").caption = caption.into();
        app.caption_edited(path);
    }
    write_due_sidecars(&mut harness);
    let errors: Vec<&str> = harness.state().app.notices.errors().collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("2 caption sidecars were not written:")),
        "{errors:?}"
    );
}

#[test]
fn turning_sidecars_on_for_thousands_writes_them_off_the_ui_thread_and_skips_unchanged_ones() {
    let fixture = fixture();
    let folder = fixture.dir.path().join("many");
    std::fs::create_dir_all(&folder).unwrap();
    let mut harness = harness_on(&fixture, Pane::Library);
    // The images need not exist for their captions to be written beside them.
    harness.state_mut().app.state.library = (0..3000)
        .map(|i| LibraryItem {
            path: folder.join(format!("img-{i:04}.png")),
            caption: if i == 7 {
                String::new()
            } else {
                format!("picture {i}")
            },
        })
        .collect();
    // One of them already holds its caption (as an import reads it: trimmed).
    std::fs::write(folder.join("img-0005.txt"), "picture 5\n").unwrap();
    harness.step();
    harness
        .get_by_label("Save captions as sidecar .txt")
        .click();
    harness.step();
    assert!(harness.state().app.state.settings.save_sidecars);
    write_due_sidecars(&mut harness);
    let written = std::fs::read_dir(&folder).unwrap().count();
    assert_eq!(
        written, 2999,
        "every captioned image's sidecar, none for the uncaptioned"
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("img-2999.txt")).unwrap(),
        "picture 2999"
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("img-0005.txt")).unwrap(),
        "picture 5\n",
        "a sidecar that already held its caption is left alone"
    );
    let notices: Vec<String> = all_notices(harness.state());
    assert!(
        notices
            .iter()
            .any(|m| m == "Wrote 2998 caption(s) to NAME.txt sidecars"),
        "{notices:?}"
    );
    // The frames around the batch stayed quick: the UI thread only queued it.
    let worst = harness.state().app.frame_times.max_ms();
    assert!(worst < 1000.0, "worst UI frame {worst:.1} ms");
}

fn reconstructions(app: &StudioApp) -> usize {
    app.compare.cached_count()
}

/// The Compare pane on the apple sample, captioned "a red apple".
fn apple_in_compare(fixture: &Fixture) -> StartOptions {
    let mut options = fixture.options();
    options.open = vec![sample("apple")];
    options.caption = Some("a red apple".into());
    options.pane = Some(Pane::Compare);
    options
}

/// Until TexTok's and the Baseline's reconstructions at the first budget are in.
fn wait_for_the_first_reconstructions(harness: &mut Harness<'static, StudioApp>) {
    wait_until(
        harness,
        "the first reconstructions",
        Duration::from_secs(60),
        |app| idle(app) && reconstructions(app) == 2,
    );
}

#[test]
fn compare_reconstructs_again_when_the_image_file_is_edited_elsewhere() {
    let fixture = fixture();
    let picture = fixture.dir.path().join("picture.png");
    std::fs::copy(sample("apple"), &picture).unwrap();
    let mut options = apple_in_compare(&fixture);
    options.open = vec![picture.clone()];
    let mut harness = harness(options);
    wait_for_the_first_reconstructions(&mut harness);
    // Another program saves another picture under the same name.
    std::fs::copy(sample("penguin"), &picture).unwrap();
    wait_until(
        &mut harness,
        "the edited picture's reconstructions",
        Duration::from_secs(60),
        |app| idle(app) && reconstructions(app) == 4,
    );
}

#[test]
fn compare_reconstructs_at_the_slider_budget_caches_and_recomputes_on_caption_edits() {
    let fixture = fixture();
    let mut harness = harness(apple_in_compare(&fixture));
    wait_for_the_first_reconstructions(&mut harness);
    harness.step();
    assert!(harness.query_all_by_label_contains("PSNR").next().is_some());
    assert!(harness.query_by_label("TexTok · 64 tokens").is_some());

    // Move the budget slider.
    harness.get_by_role(Role::Slider).set_value_accesskit(96.0);
    wait_until(
        &mut harness,
        "reconstructions at 96 tokens",
        Duration::from_secs(60),
        |app| idle(app) && reconstructions(app) == 4,
    );
    assert_eq!(harness.state().app.state.compare_budget, Some(96));
    harness.step();
    assert!(harness.query_by_label("TexTok · 96 tokens").is_some());

    // Back to 64: served from the cache, no new work.
    harness.get_by_role(Role::Slider).set_value_accesskit(64.0);
    harness.step();
    assert!(!harness.state().compare.busy());
    assert_eq!(reconstructions(harness.state()), 4);

    // Editing the caption recomputes (after the typing pause).
    harness.get_by_role(Role::MultilineTextInput).focus();
    harness.step();
    harness
        .get_by_role(Role::MultilineTextInput)
        .type_text(" on a table");
    wait_until(
        &mut harness,
        "reconstructions for the new caption",
        Duration::from_secs(60),
        |app| idle(app) && reconstructions(app) == 6,
    );

    // The grid shows every budget for both models.
    harness.get_by_label("All budgets").click();
    wait_until(&mut harness, "the grid", Duration::from_secs(60), |app| {
        idle(app) && reconstructions(app) == 12
    });
    harness.step();
    for budget in [32, 64, 128, 256] {
        assert!(
            harness
                .query_by_label(&format!("Baseline · {budget}"))
                .is_some()
        );
    }
}

#[test]
fn the_wheel_over_a_grid_cell_zooms_without_scrolling_the_grid() {
    let fixture = fixture();
    // A short window: the grid of both models' rows is taller than the pane and scrolls.
    let options = apple_in_compare(&fixture);
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 330.0))
        .build_eframe(move |cc| StudioApp::new(cc, options));
    wait_for_the_first_reconstructions(&mut harness);
    harness.get_by_label("All budgets").click();
    wait_until(&mut harness, "the grid", Duration::from_secs(60), |app| {
        idle(app) && reconstructions(app) == 8
    });
    harness.step();
    let title = harness.get_by_label("TexTok · 64").rect();
    // Over the image under the title.
    harness.hover_at(title.left_bottom() + egui::vec2(20.0, 20.0));
    harness.step();
    let wheel = |harness: &mut Harness<'_, StudioApp>, points: f32| {
        harness.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, points),
            phase: egui::TouchPhase::Move,
            modifiers: egui::Modifiers::NONE,
            source: egui::MouseWheelSource::Wheel,
        });
        for _ in 0..5 {
            harness.step();
        }
    };
    // Up zooms in, down zooms out (here back to the whole image, the most it shows).
    wheel(&mut harness, 6.0);
    assert!(harness.state().compare.view().zoom > 1.0);
    wheel(&mut harness, -6.0);
    wheel(&mut harness, -6.0);
    assert_eq!(harness.state().compare.view().zoom, 1.0);
    let after = harness.get_by_label("TexTok · 64").rect();
    assert_eq!(
        after, title,
        "the grid did not scroll with the wheel that zoomed"
    );
}

/// A PNG's text chunks, by keyword.
fn png_text(path: &std::path::Path) -> std::collections::HashMap<String, String> {
    textok_studio::data::image::read_png_text(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

#[test]
fn compare_saves_the_images_it_shows_into_a_new_folder_each_time() {
    let fixture = fixture();
    let mut harness = harness(apple_in_compare(&fixture));
    let out = tempfile::tempdir().unwrap();
    let save = |harness: &mut Harness<'static, StudioApp>| {
        let studio = harness.state_mut();
        studio
            .compare
            .save_to(out.path().to_owned(), &mut studio.app);
    };
    let folders = || {
        let mut names: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };

    // Before the reconstructions exist there is nothing to save, and nothing is written.
    save(&mut harness);
    assert!(folders().is_empty());
    assert_notice(harness.state(), |m| m.contains("not ready yet"));

    wait_for_the_first_reconstructions(&mut harness);
    harness.step();
    assert!(harness.query_by_label("Save images…").is_some());
    save(&mut harness);
    wait_idle(&mut harness, "the saved images");
    assert_eq!(folders(), ["apple"]);
    let saved = out.path().join("apple");
    let mut files: Vec<String> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["baseline-64.png", "original.png", "textok-64.png"]);
    assert_eq!(
        png_text(&saved.join("original.png"))["caption"],
        "a red apple"
    );
    let textok_sha = textok_studio::files::sha256_file(&fixture.shipped.textok).unwrap();
    for (file, model) in [("textok-64.png", "TexTok"), ("baseline-64.png", "Baseline")] {
        let text = png_text(&saved.join(file));
        assert_eq!(text["caption"], "a red apple", "{file}");
        assert_eq!(text["model"], model, "{file}");
        assert_eq!(text["tokens"], "64", "{file}");
        let psnr: f64 = text["psnr-db"].parse().unwrap();
        let ssim: f64 = text["ssim"].parse().unwrap();
        assert!(psnr.is_finite() && psnr > 0.0, "{file}: {psnr}");
        assert!(ssim > -1.0 && ssim < 1.0, "{file}: {ssim}");
        assert_eq!(
            text["model-sha256"] == textok_sha,
            model == "TexTok",
            "{file}"
        );
        let image = image::open(saved.join(file)).unwrap();
        assert_eq!((image.width(), image.height()), (32, 32), "{file}");
    }
    assert_notice(harness.state(), |m| {
        m.starts_with("Saved 3 images to ") && m.ends_with("apple")
    });

    // The grid saves every budget, next to (not over) the first set.
    harness.get_by_label("All budgets").click();
    wait_until(&mut harness, "the grid", Duration::from_secs(60), |app| {
        idle(app) && reconstructions(app) == 8
    });
    save(&mut harness);
    wait_idle(&mut harness, "the second save");
    assert_eq!(folders(), ["apple", "apple-2"]);
    assert_eq!(
        std::fs::read_dir(out.path().join("apple-2"))
            .unwrap()
            .count(),
        9
    );
    assert_eq!(std::fs::read_dir(&saved).unwrap().count(), 3);
    assert!(error_notices(harness.state()).is_empty());
}

#[test]
fn compare_offers_only_the_budgets_the_models_hold() {
    let fixture = fixture();
    let device = burn::tensor::Device::flex();
    let mut shipped = fixture.shipped.clone();
    for (text, path) in [(true, &mut shipped.textok), (false, &mut shipped.baseline)] {
        let config = textok_studio::model::textok::TexTokConfig::tiny(text).with_max_tokens(96);
        let model = textok_studio::device::init_module(&device, Some(5), || config.init(&device));
        *path = fixture.dir.path().join(format!("max96-{text}.safetensors"));
        model.save(&config, path, StoredPrecision::F16).unwrap();
    }
    let mut options = fixture.options();
    options.shipped = shipped;
    options.open = vec![sample("apple")];
    options.caption = Some("a red apple".into());
    options.pane = Some(Pane::Compare);
    let mut harness = harness(options);
    harness.state_mut().app.state.compare_budget = Some(256);
    wait_until(
        &mut harness,
        "the reconstructions at the models' largest budget",
        Duration::from_secs(60),
        |app| idle(app) && app.compare.settled(&app.app),
    );
    harness.step();
    assert!(harness.query_by_label("TexTok · 96 tokens").is_some());

    harness.get_by_label("All budgets").click();
    wait_until(&mut harness, "the grid", Duration::from_secs(60), |app| {
        idle(app) && app.compare.settled(&app.app)
    });
    harness.step();
    for budget in [32, 64, 96] {
        assert!(
            harness
                .query_by_label(&format!("Baseline · {budget}"))
                .is_some(),
            "{budget}"
        );
    }
    assert!(harness.query_by_label("Baseline · 128").is_none());
    assert_eq!(reconstructions(harness.state()), 6);
    assert!(error_notices(harness.state()).is_empty());
}

#[test]
fn undo_in_a_caption_editor_stays_with_its_image() {
    let fixture = fixture();
    let mut options = fixture.options();
    options.open = vec![sample("apple"), sample("penguin")];
    options.pane = Some(Pane::Library);
    let mut harness = harness(options);
    harness.state_mut().app.state.selected = Some(sample("apple"));
    harness.step();
    let type_into_caption = |harness: &mut Harness<'static, StudioApp>, text: &str| {
        harness.get_by_role(Role::MultilineTextInput).focus();
        harness.step();
        harness
            .get_by_role(Role::MultilineTextInput)
            .type_text(text);
        // egui records an undo point once the text has rested for a second.
        for _ in 0..90 {
            harness.step();
        }
    };
    type_into_caption(&mut harness, " APPLE WORDS");
    let apple = harness.state().app.state.library[0].caption.clone();
    assert!(apple.ends_with(" APPLE WORDS"), "{apple}");
    harness.state_mut().app.state.selected = Some(sample("penguin"));
    harness.step();
    let penguin_before = harness.state().app.state.library[1].caption.clone();
    type_into_caption(&mut harness, " PENGUIN WORDS");
    for _ in 0..3 {
        harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
        harness.step();
    }
    let penguin = harness.state().app.state.library[1].caption.clone();
    assert!(
        penguin.starts_with(&penguin_before) && !penguin.contains("apple"),
        "undo brought the apple's caption into the penguin's: {penguin}"
    );
    assert_eq!(harness.state().app.state.library[0].caption, apple);
}

#[test]
fn compare_steps_through_the_library_with_buttons_and_arrow_keys() {
    let fixture = fixture();
    let mut options = fixture.options();
    options.open = vec![sample("apple"), sample("penguin"), sample("lizard")];
    options.pane = Some(Pane::Compare);
    let mut harness = harness(options);
    harness.step();
    let selected = |harness: &Harness<'static, StudioApp>| {
        let app = &harness.state().app.state;
        let path = app.selected.as_ref().expect("an image is selected");
        path.file_stem().unwrap().to_string_lossy().into_owned()
    };
    assert_eq!(selected(&harness), "apple");
    assert!(harness.query_by_label("1 of 3").is_some());
    assert!(
        harness
            .get_by_label("Previous")
            .accesskit_node()
            .is_disabled(),
        "nothing before the first"
    );

    harness.get_by_label("Next").click();
    harness.step();
    assert_eq!(selected(&harness), "penguin");
    harness.step();
    assert!(harness.query_by_label("2 of 3").is_some());

    harness.key_press(egui::Key::ArrowRight);
    harness.step();
    assert_eq!(selected(&harness), "lizard");
    harness.key_press(egui::Key::ArrowRight);
    harness.step();
    assert_eq!(selected(&harness), "lizard", "nothing after the last");
    harness.key_press(egui::Key::ArrowLeft);
    harness.step();
    assert_eq!(selected(&harness), "penguin");

    // With the Library filtered (to the uncaptioned, say), the steps skip what it hides.
    for (index, caption) in ["", "a penguin", ""].into_iter().enumerate() {
        harness.state_mut().app.state.library[index].caption = caption.into();
    }
    harness.state_mut().app.library_filter.uncaptioned_only = true;
    harness.state_mut().app.state.selected = Some(sample("apple"));
    harness.step();
    assert!(harness.query_by_label("1 of 2 (filtered)").is_some());
    // Captioning the apple takes it out of the view; Next still goes to the next uncaptioned.
    harness.state_mut().app.state.library[0].caption = "an apple".into();
    harness.step();
    assert!(harness.query_by_label("– of 1 (filtered)").is_some());
    harness.key_press(egui::Key::ArrowRight);
    harness.step();
    assert_eq!(
        selected(&harness),
        "lizard",
        "the captioned penguin is skipped"
    );
    harness.state_mut().app.library_filter.uncaptioned_only = false;
    harness.key_press(egui::Key::ArrowLeft);
    harness.step();
    assert_eq!(selected(&harness), "penguin");

    // While the caption field has the keyboard, the arrows move its cursor, not the image.
    harness.get_by_role(Role::MultilineTextInput).focus();
    harness.step();
    harness.key_press(egui::Key::ArrowLeft);
    harness.step();
    assert_eq!(selected(&harness), "penguin");
    // The new image's reconstructions follow.
    wait_until(
        &mut harness,
        "the penguin's reconstructions",
        Duration::from_secs(60),
        |app| idle(app) && app.compare.settled(&app.app),
    );
}

#[test]
fn a_folder_opened_at_start_is_scanned_in_the_background_and_its_first_image_selected() {
    let fixture = fixture();
    let folder = fixture.dir.path().join("pictures");
    std::fs::create_dir_all(&folder).unwrap();
    for (name, caption) in [("apple", "a red apple"), ("penguin", "a penguin")] {
        std::fs::copy(sample(name), folder.join(format!("{name}.png"))).unwrap();
        std::fs::write(folder.join(format!("{name}.txt")), caption).unwrap();
    }
    let mut options = fixture.options();
    options.open = vec![folder.clone()];
    let mut harness = harness(options);
    // The window comes up at Compare, where the images are going, whether or not the scan
    // has been merged yet.
    assert_eq!(harness.state().pane, Pane::Compare);
    wait_until(
        &mut harness,
        "the folder's images",
        Duration::from_secs(60),
        |app| app.app.state.library.len() == 2,
    );
    let state = &harness.state().app.state;
    let apple = std::path::absolute(folder.join("apple.png")).unwrap();
    assert_eq!(state.selected.as_ref(), Some(&apple));
    assert!(
        state
            .library
            .iter()
            .any(|item| item.path == apple && item.caption == "a red apple")
    );
}

#[test]
fn a_broken_image_or_checkpoint_is_a_message_not_a_crash() {
    let fixture = fixture();
    let broken = fixture.dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let mut options = fixture.options();
    options.open = vec![broken];
    options.caption = Some("a broken picture".into());
    options.pane = Some(Pane::Compare);
    let mut harness = harness(options);
    wait_for_error(&mut harness, "Reconstruction failed");
    harness.step();
    assert!(harness.query_by_label_contains("Retry").is_some());
    // The empty cells say so rather than spin for good.
    assert_eq!(harness.query_all_by_label("failed").count(), 3);
    // Mended (the file replaced): it is reconstructed, and the failure's notice goes.
    let broken = fixture.dir.path().join("broken.png");
    std::fs::copy(sample("apple"), &broken).unwrap();
    wait_until(
        &mut harness,
        "the mended image's reconstruction",
        Duration::from_secs(60),
        |app| {
            idle(app)
                && !app
                    .app
                    .notices
                    .errors()
                    .any(|e| e.contains("Reconstruction failed"))
        },
    );
    // Many messages at once: the four newest are shown, and the rest counted.
    for n in 0..6 {
        harness.state_mut().app.notices.info(format!("message {n}"));
    }
    // (A few frames: the bottom panel takes its new height over them.)
    for _ in 0..3 {
        harness.step();
    }
    assert!(
        harness
            .query_by_label_contains("older message(s)")
            .is_some()
    );
    harness.get_by_label("Dismiss all").click();
    harness.step();
    let left: Vec<String> = all_notices(harness.state());
    assert!(left.is_empty(), "{left:?}");

    // A checkpoint that is not one.
    let bogus = fixture.dir.path().join("bogus.safetensors");
    std::fs::write(&bogus, b"garbage").unwrap();
    harness.state_mut().app.state.settings.textok = Some(bogus);
    wait_idle(&mut harness, "the load failure");
    harness.step();
    harness.step();
    assert!(
        harness
            .query_by_label_contains("Models failed to load")
            .is_some()
    );
    assert_eq!(harness.query_all_by_label("no models").count(), 3);
}

#[test]
fn generate_with_a_fixed_seed_reproduces_the_image_and_keeps_its_settings() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Generate);
    // An empty prompt is the pane's normal start, not a missing caption to point out.
    harness.step();
    assert!(harness.state().app.state.generate.caption.is_empty());
    assert!(harness.query_by_label_contains("No caption yet").is_none());
    {
        let form = &mut harness.state_mut().app.state.generate;
        form.caption = "a red apple".into();
        form.tokens = 48;
        form.steps = 3;
        form.cfg = 2.0;
        form.seed = 5;
        form.random_seed = false;
        form.count = 1;
    }
    wait_idle(&mut harness, "the generator");
    for round in 1..=2 {
        harness.step();
        harness.get_by_label("Generate images").click();
        harness.step();
        wait_until(
            &mut harness,
            "the generation",
            Duration::from_secs(60),
            |app| idle(app) && app.app.state.gallery.len() == round,
        );
    }
    let gallery = harness.state().app.state.gallery.clone();
    assert_eq!(gallery[0].settings.seed, 5);
    assert_eq!(gallery[0].settings.caption, "a red apple");
    let first = image::open(&gallery[0].file).unwrap().to_rgb8();
    let second = image::open(&gallery[1].file).unwrap().to_rgb8();
    assert_eq!(first, second, "same seed, same image");
    assert!(gallery[0].file.starts_with(fixture.data_dir()));
    assert_eq!(
        harness.state().app.state.recent_prompts,
        vec!["a red apple".to_owned()]
    );

    // Save as…: the copy is written off the UI thread, and said so.
    let (answer, dialog) = std::sync::mpsc::channel();
    let copy = fixture.dir.path().join("saved-as.png");
    harness.state_mut().generate.save_dialog = Some((dialog, gallery[0].file.clone()));
    answer.send(vec![copy.clone()]).unwrap();
    wait_until(
        &mut harness,
        "the saved copy",
        Duration::from_secs(30),
        |app| {
            app.app
                .notices
                .all()
                .any(|m| m.starts_with("Saved ") && m.ends_with("saved-as.png"))
        },
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&gallery[0].file).unwrap()
    );

    // Reuse settings, then send to the Library.
    harness.state_mut().app.state.generate.caption.clear();
    let app = harness.state_mut();
    app.generate.act(0, GalleryAction::Reuse, &mut app.app);
    assert_eq!(app.app.state.generate.caption, "a red apple");
    let other_models = |app: &StudioApp| {
        all_notices(app)
            .into_iter()
            .filter(|m| m.contains("that made this image"))
            .collect::<Vec<_>>()
    };
    assert!(other_models(app).is_empty(), "{:?}", other_models(app));
    // An image made by another DiT: reusing its settings says they will not make it again.
    let made_with = app.app.state.gallery[0].settings.models.clone().unwrap();
    app.app.state.gallery[0].settings.models = Some(state::ModelHashes {
        dit: "another DiT".into(),
        ..made_with.clone()
    });
    app.generate.act(0, GalleryAction::Reuse, &mut app.app);
    assert_eq!(other_models(app).len(), 1, "{:?}", all_notices(app));
    assert!(other_models(app)[0].contains("the DiT in use"));
    app.app.state.gallery[0].settings.models = Some(made_with);
    app.generate.act(0, GalleryAction::ToLibrary, &mut app.app);
    assert_eq!(app.app.state.library.len(), 1);
    assert_eq!(app.app.state.library[0].caption, "a red apple");
    let bytes = std::fs::read(&gallery[1].file).unwrap();
    app.generate.act(1, GalleryAction::Delete, &mut app.app);
    assert_eq!(app.app.state.gallery.len(), 1);
    assert!(!gallery[1].file.exists());
    app.generate.act(0, GalleryAction::Delete, &mut app.app);
    assert!(app.app.state.gallery.is_empty());
    // Undo (offered in the empty gallery too) brings back each entry, in its place, and the
    // file as it was.
    for _ in 0..2 {
        harness.step();
        harness.get_by_label_contains("Undo delete").click();
        harness.step();
    }
    assert_eq!(harness.state().app.state.gallery, gallery);
    assert_eq!(std::fs::read(&gallery[1].file).unwrap(), bytes);
    harness.step();
    assert!(harness.query_by_label_contains("Undo delete").is_none());

    // A saved budget the loaded DiT does not hold is kept (one of more budgets loaded later
    // offers it again); generating uses the nearest one the slider shows.
    let budgets = match harness.state_mut().app.engines.generate() {
        textok_studio::gui::engines::EngineStatus::Ready(engine) => engine.budgets(),
        _ => panic!("the generator is loaded"),
    };
    assert!(
        *budgets.end() < 256,
        "the test DiT holds fewer budgets than 256"
    );
    harness.state_mut().app.state.generate.tokens = 256;
    for _ in 0..3 {
        harness.step();
    }
    assert_eq!(harness.state().app.state.generate.tokens, 256);
    harness.get_by_label("Generate images").click();
    wait_until(
        &mut harness,
        "the generation at the largest budget",
        Duration::from_secs(60),
        |app| idle(app) && app.app.state.gallery.len() == 3,
    );
    let newest = harness
        .state()
        .app
        .state
        .gallery
        .iter()
        .map(|e| e.settings.tokens)
        .max();
    assert_eq!(newest, Some(*budgets.end()));
    assert_eq!(harness.state().app.state.generate.tokens, 256);
}

#[test]
fn a_gallery_of_thousands_only_lays_out_and_decodes_the_visible_rows() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Generate);
    let entry = |i: usize| textok_studio::gui::state::GalleryEntry {
        file: fixture.dir.path().join(format!("missing-{i:05}.png")),
        settings: textok_studio::gui::state::GenerationSettings {
            caption: format!("picture number {i}"),
            tokens: 64,
            steps: 50,
            cfg: 3.0,
            seed: i as u64,
            models: None,
        },
    };
    harness.state_mut().app.state.gallery = (0..5000).map(entry).collect();
    assert_only_the_visible_rows_load(&mut harness);

    // The caption filter narrows it (any case, every word) and still lays out only one screen.
    harness.get_by_role(Role::TextInput).focus();
    harness.step();
    harness.get_by_role(Role::TextInput).type_text("NUMBER 7");
    harness.step();
    let expected = (0..5000).filter(|i| i.to_string().contains('7')).count();
    assert!(
        harness
            .query_by_label(&format!("{expected} of 5000 images"))
            .is_some()
    );
    let app = harness.state();
    let shown = app.generate.shown(&app.app.state.gallery);
    assert_eq!(shown.len(), expected);
    assert!(shown.iter().all(|&i| i.to_string().contains('7')));
    assert_only_the_visible_rows_load(&mut harness);
    harness.state_mut().generate.filter = "kitten".into();
    harness.step();
    assert!(
        harness
            .query_by_label("No generated image's caption matches the filter.")
            .is_some()
    );
}

/// A small red image as the sampler returns it (3 DDIM steps, guidance 2).
fn generated_image(seed: u64, caption: &str, tokens: usize) -> GeneratedImage {
    GeneratedImage {
        image: image::Rgb32FImage::from_pixel(8, 8, image::Rgb([0.9, 0.1, 0.1])),
        caption: caption.into(),
        settings: SampleSettings {
            tokens,
            steps: 3,
            cfg: 2.0,
            seed,
            count: 1,
            guidance_interval: None,
        },
    }
}

/// Model identities for images saved without loading models.
fn test_models() -> textok_studio::pipeline::GeneratorIdentity {
    textok_studio::pipeline::GeneratorIdentity {
        tokenizer: textok_studio::pipeline::Tokenizer::TexTok,
        tokenizer_id: "t".into(),
        dit_id: "d".into(),
    }
}

/// The Generate pane with its generator loaded and a form for a long job (1000 DDIM steps,
/// fixed seed), `count` images.
fn long_generation_harness(fixture: &Fixture, count: usize) -> Harness<'static, StudioApp> {
    let mut harness = harness_on(fixture, Pane::Generate);
    wait_idle(&mut harness, "the generator");
    {
        let form = &mut harness.state_mut().app.state.generate;
        form.caption = "a long job".into();
        form.steps = 1000;
        form.count = count;
        form.random_seed = false;
    }
    harness.step();
    harness
}

#[test]
fn a_generated_image_that_cannot_be_saved_does_not_cost_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("generated");
    let image = |seed| generated_image(seed, "a red apple", 32);
    // A folder where the second image goes: that one save fails, the other two must not.
    std::fs::create_dir_all(out.join("7-seed2-k32.png")).unwrap();
    let models = test_models();
    let outcome = save_generation(vec![image(1), image(2), image(3)], &out, &models, 7);
    let seeds: Vec<u64> = outcome.entries.iter().map(|e| e.settings.seed).collect();
    assert_eq!(seeds, [1, 3]);
    assert!(outcome.entries.iter().all(|e| e.file.is_file()));
    assert_eq!(outcome.unsaved.len(), 1, "{:?}", outcome.unsaved);
    assert!(
        outcome.unsaved[0].contains("7-seed2-k32.png"),
        "names the file: {}",
        outcome.unsaved[0]
    );

    // The folder removed while the sampler ran: made again, nothing lost.
    std::fs::remove_dir_all(&out).unwrap();
    let outcome = save_generation(vec![image(4)], &out, &models, 8);
    assert!(outcome.unsaved.is_empty(), "{:?}", outcome.unsaved);
    assert!(out.join("8-seed4-k32.png").is_file());
}

#[test]
fn generated_images_the_gallery_lost_come_back_with_their_settings() {
    let fixture = fixture();
    let out = fixture.data_dir().join("generated");
    let image = |seed, caption: &str| generated_image(seed, caption, 48);
    let models = test_models();
    let older = save_generation(vec![image(1, "an older apple")], &out, &models, 100);
    let newer = save_generation(vec![image(2, "a newer pear")], &out, &models, 200);
    // A PNG that is no generated image stays out of the gallery.
    std::fs::copy(sample("apple"), out.join("holiday.png")).unwrap();
    // The state lists the older image only, and is then damaged: set aside, started fresh.
    let saved = PersistedState {
        gallery: older.entries.clone(),
        ..Default::default()
    };
    state::save(&fixture.data_dir(), &saved).unwrap();
    let mut harness = harness_on(&fixture, Pane::Generate);
    wait_until(
        &mut harness,
        "the lost image",
        Duration::from_secs(30),
        |app| app.app.state.gallery.len() == 2,
    );
    let gallery = harness.state().app.state.gallery.clone();
    assert_eq!(gallery[0], newer.entries[0], "newest first, as saved");
    assert_eq!(gallery[1], older.entries[0]);
    assert!(
        all_notices(harness.state())
            .iter()
            .any(|m| m.starts_with("1 generated image(s)") && m.contains("they are back")),
        "{:?}",
        all_notices(harness.state())
    );
    drop(harness);

    std::fs::write(fixture.data_dir().join(state::STATE_FILE), b"{ not json").unwrap();
    let mut harness = harness_on(&fixture, Pane::Generate);
    wait_until(
        &mut harness,
        "both images",
        Duration::from_secs(30),
        |app| app.app.state.gallery.len() == 2,
    );
    assert_eq!(harness.state().app.state.gallery, gallery);
}

#[test]
fn generation_can_be_cancelled_and_the_ui_stays_responsive_meanwhile() {
    let fixture = fixture();
    let mut harness = long_generation_harness(&fixture, 8);
    harness.get_by_label("Generate images").click();
    harness.step();
    assert!(harness.state().generate.busy());
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        harness.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    let frames = &harness.state().app.frame_times;
    assert!(frames.len() > 20);
    // The UI thread only polls the job. Frames are measured in wall time on a 2-core machine
    // busy with the job and other tests, so the bounds leave room for being descheduled (a
    // median of 18 ms was seen during a parallel build); work done on the UI thread instead
    // (sampling 1000 steps, loading a model) would hold a frame for seconds.
    let (median, worst) = (frames.quantile_ms(0.5), frames.max_ms());
    assert!(
        median < 100.0,
        "median UI frame {median:.1} ms while generating"
    );
    assert!(
        worst < 1000.0,
        "worst UI frame {worst:.1} ms while generating"
    );
    harness.get_by_label("Cancel").click();
    wait_until(
        &mut harness,
        "the cancellation",
        Duration::from_secs(30),
        idle,
    );
    assert!(harness.state().app.state.gallery.is_empty());
}

#[test]
fn ctrl_and_a_digit_switch_panes_in_the_tabs_order() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Library);
    harness.step();
    for (key, pane) in [
        (egui::Key::Num3, Pane::Generate),
        (egui::Key::Num5, Pane::Settings),
        (egui::Key::Num4, Pane::FineTune),
        (egui::Key::Num2, Pane::Compare),
        (egui::Key::Num1, Pane::Library),
    ] {
        harness.key_press_modifiers(egui::Modifiers::COMMAND, key);
        harness.step();
        assert_eq!(harness.state().pane, pane, "{key:?}");
    }
}

#[test]
fn ctrl_enter_generates_from_the_caption_field_and_escape_cancels() {
    let fixture = fixture();
    let mut harness = long_generation_harness(&fixture, 1);
    harness.get_by_role(Role::MultilineTextInput).focus();
    harness.step();
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    harness.step();
    assert!(harness.state().generate.generating());
    assert_eq!(
        harness.state().app.state.generate.caption,
        "a long job",
        "the shortcut types no line break into the caption"
    );
    harness.key_press(egui::Key::Escape);
    wait_until(
        &mut harness,
        "the cancellation",
        Duration::from_secs(30),
        idle,
    );
    assert!(harness.state().app.state.gallery.is_empty());
}

/// Presses the window's close button (the event the window system sends) and runs a frame.
fn request_close(harness: &mut Harness<'static, StudioApp>) {
    harness
        .input_mut()
        .viewports
        .entry(egui::ViewportId::ROOT)
        .or_default()
        .events
        .push(egui::ViewportEvent::Close);
    harness.step();
}

/// The window commands the last frame sent.
fn window_commands(harness: &Harness<'static, StudioApp>) -> Vec<egui::ViewportCommand> {
    harness
        .output()
        .viewport_output
        .get(&egui::ViewportId::ROOT)
        .map(|output| output.commands.clone())
        .unwrap_or_default()
}

#[test]
fn closing_the_window_while_generating_asks_first_then_stops_the_work_and_closes() {
    use textok_studio::gui::Closing;
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Generate);
    wait_idle(&mut harness, "the generator");

    // Nothing at risk: the window just closes.
    request_close(&mut harness);
    assert!(!window_commands(&harness).contains(&egui::ViewportCommand::CancelClose));
    assert_eq!(harness.state().closing(), Closing::No);

    {
        let form = &mut harness.state_mut().app.state.generate;
        form.caption = "a long job".into();
        form.steps = 1000;
        form.count = 8;
    }
    harness.step();
    harness.get_by_label("Generate images").click();
    harness.step();
    assert!(harness.state().generate.busy());

    request_close(&mut harness);
    assert!(window_commands(&harness).contains(&egui::ViewportCommand::CancelClose));
    assert_eq!(harness.state().closing(), Closing::Asking);
    harness.step();
    assert!(harness.query_by_label("Work is still running").is_some());
    assert!(
        harness
            .query_by_label_contains("quitting now loses this batch")
            .is_some()
    );

    harness.get_by_label("Keep working").click();
    harness.step();
    assert_eq!(harness.state().closing(), Closing::No);
    assert!(harness.state().generate.busy(), "the work goes on");
    harness.step();
    assert!(harness.query_by_label("Work is still running").is_none());

    request_close(&mut harness);
    harness.step();
    harness.get_by_label("Stop and quit").click();
    harness.step();
    assert_eq!(harness.state().closing(), Closing::Stopping);
    // A second press while the work is still stopping is put off too (a tiny model may
    // already have stopped, and then the window closes).
    let still_stopping = harness.state().generate.busy();
    request_close(&mut harness);
    if still_stopping && harness.state().closing() == Closing::Stopping {
        assert!(window_commands(&harness).contains(&egui::ViewportCommand::CancelClose));
    }
    wait_until(
        &mut harness,
        "the window to close once the work stopped",
        Duration::from_secs(30),
        |app| app.closing() == Closing::Now,
    );
    assert!(!harness.state().generate.busy());
    assert!(window_commands(&harness).contains(&egui::ViewportCommand::Close));
}

#[test]
fn closing_while_the_state_cannot_be_saved_asks_first() {
    use textok_studio::gui::Closing;
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Library);
    harness.step();
    // A folder where the state file goes: no write can replace it (not even as root).
    std::fs::create_dir_all(fixture.data_dir().join(state::STATE_FILE)).unwrap();
    harness
        .state_mut()
        .app
        .state
        .recent_prompts
        .push("a red apple".into());
    wait_until(
        &mut harness,
        "the failed save",
        Duration::from_secs(10),
        |app| {
            error_notices(app)
                .iter()
                .any(|e| e.contains("Cannot save the app state"))
        },
    );
    request_close(&mut harness);
    assert!(window_commands(&harness).contains(&egui::ViewportCommand::CancelClose));
    assert_eq!(harness.state().closing(), Closing::Asking);
    harness.step();
    assert!(harness.query_by_label("Changes are not saved").is_some());
    assert!(
        harness
            .query_by_label_contains("loses the changes since the last save")
            .is_some()
    );
    // Told to quit anyway, it closes at once: nothing is running that must stop first.
    harness.get_by_label("Stop and quit").click();
    harness.step();
    harness.step();
    assert_eq!(harness.state().closing(), Closing::Now);
    assert!(window_commands(&harness).contains(&egui::ViewportCommand::Close));
}

#[test]
fn fine_tune_with_a_time_limit_stops_by_itself() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::FineTune);
    harness.state_mut().app.state.library.push(LibraryItem {
        path: sample("apple"),
        caption: "a red apple".into(),
    });
    harness.step();
    assert!(
        harness
            .query_by_label("Time limit (minutes, 0 = none)")
            .is_some()
    );
    {
        let form = &mut harness.state_mut().finetune.form;
        form.steps = 100_000;
        form.batch = 1;
        form.time_limit_minutes = 0.01;
    }
    harness.get_by_label("Start").click();
    let live = harness.state().finetune.live();
    wait_until(
        &mut harness,
        "a training step",
        Duration::from_secs(120),
        |_| !live.lock().unwrap().losses.is_empty(),
    );
    wait_until(
        &mut harness,
        "the end of the time limit",
        Duration::from_secs(120),
        idle,
    );
    let last = live.lock().unwrap().last_step.clone().expect("a step");
    // 0.6 s is over long before the 60 steps that measure the speed: the run stops unfinished,
    // its schedule kept (not ended at full learning rate), and Resume goes on with it.
    assert!(
        last.step < textok_studio::train::TimeLimit::STEPS_BEFORE_FITTING && last.total == 100_000,
        "{last:?}"
    );
    let runs = list_runs(&fixture.data_dir());
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].saved_step, Some(last.step), "{runs:?}");
    assert_eq!(runs[0].steps, 100_000, "{runs:?}");
    assert!(!runs[0].finished && runs[0].resumable, "{runs:?}");
    harness.step();
    assert!(harness.query_by_label("Resume").is_some());
    assert_notice(harness.state(), |notice| {
        notice.contains(&format!("stopped at step {}", last.step))
    });
}

#[test]
fn fine_tune_starts_cancels_resumes_and_switches_models() {
    let fixture = fixture();
    let mut harness = fine_tune_harness(
        &fixture,
        &[
            ("apple", "a red apple"),
            ("penguin", "a penguin"),
            ("lizard", "a green lizard"),
        ],
        100_000,
        2,
    );
    harness.get_by_label("Start").click();
    let live = harness.state().finetune.live();
    wait_until(
        &mut harness,
        "two training steps",
        Duration::from_secs(120),
        |_| live.lock().unwrap().losses.len() >= 2,
    );
    harness.step();
    assert!(harness.query_all_by_label_contains("loss").next().is_some());
    harness.get_by_label("Cancel").click();
    wait_idle(&mut harness, "the cancellation");
    let runs = list_runs(&fixture.data_dir());
    assert_eq!(runs.len(), 1);
    assert!(runs[0].resumable && runs[0].has_weights, "{runs:?}");
    // By default the run keeps the tokens, so the generator stays valid.
    let run_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(run_config["freeze_encoder"], true, "{run_config}");
    let stopped_at = live.lock().unwrap().losses.len();
    let saved_step = runs[0].saved_step.expect("a saved step");
    assert!(!runs[0].finished && saved_step < 100_000, "{runs:?}");
    harness.step();
    assert!(
        harness
            .query_by_label_contains(&format!("step {saved_step} of 100000"))
            .is_some()
    );

    // Resume continues from the saved step.
    harness.step();
    harness.get_by_label("Resume").click();
    // The plot starts with the history the run logged up to its saved state (read by the job,
    // not on the UI thread).
    let logged = textok_studio::gui::finetune::logged_losses(&runs[0].dir, saved_step);
    assert!(!logged.is_empty(), "the run logged its first step");
    wait_until(
        &mut harness,
        "the logged losses",
        Duration::from_secs(60),
        |_| live.lock().unwrap().losses.len() >= logged.len(),
    );
    let history = live.lock().unwrap().losses.clone();
    assert_eq!(
        history[..logged.len()],
        logged[..],
        "the logged losses come back"
    );
    wait_until(
        &mut harness,
        "a resumed step",
        Duration::from_secs(120),
        |_| {
            let live = live.lock().unwrap();
            live.losses
                .last()
                .is_some_and(|&[step, _]| step as usize > saved_step)
        },
    );
    let resumed_step = live
        .lock()
        .unwrap()
        .losses
        .iter()
        .find(|&&[step, _]| step as usize > saved_step)
        .expect("a resumed step")[0] as usize;
    assert_eq!(
        resumed_step,
        saved_step + 1,
        "stopped after {stopped_at} steps"
    );
    harness.state_mut().finetune.cancel();
    wait_idle(&mut harness, "the second cancellation");

    // Use the fine-tuned model, then revert.
    harness.step();
    harness.get_by_label("Use this model").click();
    harness.step();
    let in_use = harness
        .state()
        .app
        .state
        .settings
        .textok
        .clone()
        .expect("a model in use");
    assert!(in_use.starts_with(fixture.data_dir()));
    harness.step();
    // Chosen again, or resumed while in use: the newer weights it saved are loaded again.
    let generation = harness.state().app.engines.generation();
    harness.get_by_label("Use this model").click();
    harness.step();
    assert!(harness.state().app.engines.generation() > generation);
    let generation = harness.state().app.engines.generation();
    harness.get_by_label("Resume").click();
    harness.step();
    harness.state_mut().finetune.cancel();
    wait_idle(&mut harness, "the resumed run in use");
    assert!(
        harness.state().app.engines.generation() > generation,
        "reloaded once the run in use ended"
    );
    assert_notice(harness.state(), |notice| {
        notice.contains("(the run is in use)")
    });
    // A run whose model is in use cannot be deleted.
    let run_dir = harness.state().finetune.runs()[0].dir.clone();
    {
        let studio = harness.state_mut();
        let refused = studio.finetune.delete_run(&run_dir, &mut studio.app);
        assert!(
            refused.unwrap_err().to_string().contains("revert"),
            "refused while in use"
        );
    }
    assert!(run_dir.is_dir());
    // A Start refused for its settings keeps the last run's plot.
    let plotted = live.lock().unwrap().losses.len();
    assert!(plotted > 0);
    {
        let form = &mut harness.state_mut().finetune.form;
        form.use_library = false;
        form.folder = fixture
            .dir
            .path()
            .join("no-such-folder")
            .display()
            .to_string();
    }
    harness.step();
    harness.get_by_label("Start").click();
    harness.step();
    assert_notice(harness.state(), |notice| notice.contains("pick a folder"));
    assert_eq!(live.lock().unwrap().losses.len(), plotted);
    harness.state_mut().finetune.form.use_library = true;
    harness.step();
    harness.get_by_label("Revert to the shipped models").click();
    harness.step();
    assert_eq!(harness.state().app.state.settings.textok, None);

    // Delete asks once more, then removes the run and its files.
    harness.step();
    harness.get_by_label("Delete…").click();
    harness.step();
    harness.step();
    assert!(run_dir.is_dir(), "not before the confirmation");
    let caches = textok_studio::train::tokenizer::cache_files(&run_dir.join("data"));
    assert!(
        !caches.is_empty(),
        "training decoded the copied images once"
    );
    harness.get_by_label("Delete for good").click();
    harness.step();
    assert!(!run_dir.exists());
    assert!(
        caches.iter().all(|cache| !cache.exists()),
        "the run's decode cache goes with it"
    );
    // The folder itself is removed in the background, under a hidden name; a deletion cut
    // short by quitting is finished by the next session.
    let runs_dir = run_dir.parent().unwrap().to_owned();
    let leftovers = || {
        std::fs::read_dir(&runs_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".deleting-"))
            .count()
    };
    let started = std::time::Instant::now();
    while leftovers() > 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(leftovers(), 0);
    let interrupted = runs_dir.join(".deleting-1-textok-9");
    std::fs::create_dir_all(interrupted.join("data")).unwrap();
    std::fs::write(interrupted.join("config.json"), br#"{"steps": 40}"#).unwrap();
    let mut next_session = textok_studio::gui::finetune::FineTunePane::default();
    next_session.refresh_runs(&fixture.data_dir());
    assert!(next_session.runs().is_empty(), "not listed as a run");
    let started = std::time::Instant::now();
    while interrupted.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!interrupted.exists());
    assert!(harness.state().finetune.runs().is_empty());
    // Nothing outside the data folder's runs is ever deleted through it.
    let elsewhere = fixture.dir.path().join("not-a-run");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let studio = harness.state_mut();
    assert!(
        studio
            .finetune
            .delete_run(&elsewhere, &mut studio.app)
            .is_err()
    );
    assert!(elsewhere.is_dir());
}

#[test]
fn a_run_with_a_damaged_training_state_says_so_and_offers_no_resume() {
    let fixture = fixture();
    let run = fixture
        .data_dir()
        .join(textok_studio::gui::finetune::FINETUNE_DIR)
        .join("textok-1");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.json"), br#"{"steps": 40}"#).unwrap();
    std::fs::write(run.join("state.safetensors"), b"not a checkpoint").unwrap();
    let runs = list_runs(&fixture.data_dir());
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].resumable, "{runs:?}");
    let label = runs[0].progress_label();
    assert!(
        label.contains("cannot be read") && label.contains("state.safetensors"),
        "{label}"
    );
}

#[test]
fn a_pasted_document_is_cut_to_the_caption_limit_and_so_is_the_recent_prompt() {
    use textok_studio::gui::library::MAX_CAPTION_CHARS;
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Generate);
    harness.get_by_role(Role::MultilineTextInput).focus();
    harness.step();
    harness
        .get_by_role(Role::MultilineTextInput)
        .type_text(&"a red apple ".repeat(MAX_CAPTION_CHARS / 4));
    harness.step();
    let caption = harness.state().app.state.generate.caption.clone();
    assert_eq!(caption.chars().count(), MAX_CAPTION_CHARS);
    // A longer caption from a file still goes into the recent prompts only up to the limit.
    let mut state = PersistedState::default();
    state.remember_prompt(&"é".repeat(MAX_CAPTION_CHARS + 10));
    assert_eq!(state.recent_prompts[0].chars().count(), MAX_CAPTION_CHARS);
}

#[test]
fn a_new_run_that_fails_before_its_first_checkpoint_leaves_no_folder_behind() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::FineTune);
    // Captioned, but the file is gone: the copy finds nothing to train on and fails before the
    // trainer writes the run's config.json (so the run would never be listed, or deletable).
    harness.state_mut().app.state.library.push(LibraryItem {
        path: fixture.dir.path().join("moved-away.png"),
        caption: "a red apple".into(),
    });
    harness.step();
    harness.get_by_label("Start").click();
    wait_idle(&mut harness, "the failed start");
    let errors = error_notices(harness.state());
    assert!(
        errors.iter().any(|e| e.contains("is where it was added")),
        "{errors:?}"
    );
    let runs_dir = fixture
        .data_dir()
        .join(textok_studio::gui::finetune::FINETUNE_DIR);
    // What is left once the background deletion had time to finish.
    let left = || -> Vec<_> {
        let started = std::time::Instant::now();
        loop {
            let entries: Vec<_> = std::fs::read_dir(&runs_dir)
                .map(|entries| entries.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            if entries.is_empty() || started.elapsed() > Duration::from_secs(30) {
                return entries;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(left().is_empty(), "left behind: {:?}", left());

    // A folder whose only picture cannot be decoded: the trainer writes the run's config.json
    // and then fails on the data. Nothing can resume that run, so it goes too.
    let folder = fixture.dir.path().join("broken-pictures");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.png"), b"not a picture").unwrap();
    std::fs::write(folder.join("a.txt"), "a red apple").unwrap();
    {
        let form = &mut harness.state_mut().finetune.form;
        form.use_library = false;
        form.folder = folder.display().to_string();
    }
    harness.step();
    harness.get_by_label("Start").click();
    wait_idle(&mut harness, "the failed run");
    let errors = error_notices(harness.state());
    assert!(
        errors.iter().any(|e| e.contains("Fine-tuning failed")),
        "{errors:?}"
    );
    assert!(left().is_empty(), "left behind: {:?}", left());
    assert!(harness.state().finetune.runs().is_empty());

    // The same run stopped by quitting (the window's exit waits for it instead of a frame
    // collecting it): nothing is left behind either.
    harness.get_by_label("Start").click();
    harness
        .state_mut()
        .finetune
        .cancel_and_wait(Duration::from_secs(60));
    assert!(left().is_empty(), "left behind: {:?}", left());
}

#[test]
fn a_tokenizer_run_that_a_dit_run_trains_on_cannot_be_deleted_first() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::FineTune);
    let runs_dir = fixture
        .data_dir()
        .join(textok_studio::gui::finetune::FINETUNE_DIR);
    let (tokenizer_run, dit_run) = (runs_dir.join("textok-1"), runs_dir.join("dit-2"));
    let decoder_run = runs_dir.join("decoder-3");
    for dir in [&tokenizer_run, &dit_run, &decoder_run] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(tokenizer_run.join("config.json"), br#"{"steps": 40}"#).unwrap();
    let dit_config = serde_json::json!({
        "steps": 40,
        "tokenizer": tokenizer_run.join("ema.safetensors"),
    });
    std::fs::write(dit_run.join("config.json"), dit_config.to_string()).unwrap();
    // A generation-decoder run samples with the DiT run's model at every step.
    let decoder_config = serde_json::json!({
        "steps": 40,
        "regenerate_with": dit_run.join("ema.safetensors"),
    });
    std::fs::write(decoder_run.join("config.json"), decoder_config.to_string()).unwrap();
    let studio = harness.state_mut();
    let refused = studio
        .finetune
        .delete_run(&dit_run, &mut studio.app)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("decoder-3") && refused.contains("delete that run first"),
        "{refused}"
    );
    studio
        .finetune
        .delete_run(&decoder_run, &mut studio.app)
        .unwrap();
    let refused = studio
        .finetune
        .delete_run(&tokenizer_run, &mut studio.app)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("dit-2") && refused.contains("delete that run first"),
        "{refused}"
    );
    assert!(tokenizer_run.is_dir());
    // A run that trains in another window or a terminal (which holds its train.lock) stays.
    let training = textok_studio::files::try_lock_file(&dit_run.join("train.lock"))
        .expect("not locked yet")
        .expect("this file system locks");
    let refused = studio
        .finetune
        .delete_run(&dit_run, &mut studio.app)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("training in another window"), "{refused}");
    assert!(dit_run.is_dir());
    drop(training);
    // Once the DiT run is gone, the tokenizer's run goes too.
    studio
        .finetune
        .delete_run(&dit_run, &mut studio.app)
        .unwrap();
    studio
        .finetune
        .delete_run(&tokenizer_run, &mut studio.app)
        .unwrap();
    assert!(!tokenizer_run.exists() && !dit_run.exists());
}

/// Writes the fixture's generation decoder: the shipped TexTok's encoder (its tokens), another
/// last detokenizer layer.
fn write_generation_decoder(fixture: &Fixture) {
    let device = burn::tensor::Device::flex();
    let file = textok_studio::checkpoint::CheckpointFile::read(&fixture.shipped.textok).unwrap();
    let (textok, config) =
        textok_studio::model::textok::TexTok::from_checkpoint(&file, &device).unwrap();
    let other = textok_studio::device::init_module(&device, Some(99), || config.init(&device));
    let decoder = textok_studio::model::textok::TexTok {
        to_pixels: other.to_pixels,
        ..textok
    };
    decoder
        .save(
            &config,
            &fixture.shipped.generation_decoder,
            StoredPrecision::F16,
        )
        .unwrap();
}

/// Generate decodes with the shipped generation decoder and Compare with the shipped TexTok
/// (Settings says which); a TexTok file chosen in Settings is used by both.
#[test]
fn generate_and_compare_each_decode_with_their_own_shipped_tokenizer() {
    use textok_studio::gui::engines::EngineStatus;
    use textok_studio::pipeline::ModelSource;
    let fixture = fixture();
    write_generation_decoder(&fixture);
    let mut harness = harness_on(&fixture, Pane::Settings);
    harness.step();
    harness.get_by_label_contains(&format!(
        "Generate decodes with: {}",
        fixture.shipped.generation_decoder.display()
    ));
    let loaded_path = |harness: &mut Harness<'static, StudioApp>, generate: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            harness.step();
            let engines = &mut harness.state_mut().app.engines;
            let source = if generate {
                match engines.generate() {
                    EngineStatus::Ready(engine) => Some(engine.textok.source.clone()),
                    EngineStatus::Failed(error) => panic!("{error}"),
                    EngineStatus::Loading(_) => None,
                }
            } else {
                match engines.reconstruct() {
                    EngineStatus::Ready(engine) => Some(engine.textok.source.clone()),
                    EngineStatus::Failed(error) => panic!("{error}"),
                    EngineStatus::Loading(_) => None,
                }
            };
            match source {
                Some(ModelSource::File { path, .. }) => return path,
                Some(other) => panic!("{other}"),
                None if std::time::Instant::now() > deadline => panic!("the engines did not load"),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    assert_eq!(
        loaded_path(&mut harness, true),
        fixture.shipped.generation_decoder
    );
    match harness.state_mut().app.engines.generate() {
        EngineStatus::Ready(engine) => assert_eq!(engine.token_mismatch, None),
        _ => panic!("the generator is loaded"),
    }
    assert_eq!(loaded_path(&mut harness, false), fixture.shipped.textok);
    assert!(error_notices(harness.state()).is_empty());

    // A chosen TexTok (a fine-tuned one, say) decodes for both.
    let chosen = fixture.dir.path().join("chosen.safetensors");
    std::fs::copy(&fixture.shipped.textok, &chosen).unwrap();
    harness.state_mut().app.state.settings.textok = Some(chosen.clone());
    harness.step();
    assert_eq!(loaded_path(&mut harness, true), chosen);
    assert_eq!(loaded_path(&mut harness, false), chosen);
    harness.get_by_label_contains(&format!(
        "Generate decodes with: {} (the chosen TexTok)",
        chosen.display()
    ));

    // A chosen generation decoder (a fine-tuned one) decodes for Generate alone.
    harness.state_mut().app.state.settings.generation_decoder =
        Some(fixture.shipped.generation_decoder.clone());
    harness.step();
    assert_eq!(
        loaded_path(&mut harness, true),
        fixture.shipped.generation_decoder
    );
    assert_eq!(loaded_path(&mut harness, false), chosen);
    harness.get_by_label_contains(&format!(
        "Generate decodes with: {} (the chosen generation decoder)",
        fixture.shipped.generation_decoder.display()
    ));
    harness.get_by_label("Automatic decoder").click();
    harness.step();
    assert_eq!(harness.state().app.state.settings.generation_decoder, None);
    assert_eq!(loaded_path(&mut harness, true), chosen);
}

/// The Fine-tune pane trains the generation decoder on noisy tokens, from the decoder Generate
/// uses, with the tokens kept; "Use this model" hands it to Generate alone.
#[test]
fn fine_tuning_the_dit_with_mirror_images_trains_on_them_too() {
    use textok_studio::gui::finetune::Target;
    let fixture = fixture();
    let mut harness = fine_tune_harness(
        &fixture,
        &[
            ("apple", "a red apple"),
            ("penguin", "a penguin facing left"),
        ],
        2,
        2,
    );
    let label = "Also learn each image's mirror image";
    assert!(
        harness.query_by_label(label).is_none(),
        "only DiT runs offer mirror images"
    );
    harness.get_by_label("DiT generator").click();
    harness.step();
    assert_eq!(harness.state().finetune.form.target, Target::Dit);
    harness.get_by_label(label).click();
    harness.step();
    assert!(harness.state().finetune.form.mirror_images);
    harness.get_by_label("Start").click();
    wait_idle(&mut harness, "the DiT's run");
    assert!(
        error_notices(harness.state()).is_empty(),
        "{:?}",
        error_notices(harness.state())
    );
    let runs = list_runs(&fixture.data_dir());
    assert_eq!(runs.len(), 1);
    assert!(runs[0].finished, "{runs:?}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["mirror"], true, "{config}");
    // The latent cache holds the apple's mirror image; the penguin's caption names a direction.
    let cache = std::fs::read(runs[0].dir.join("latents.bin")).unwrap();
    let header_len = u64::from_le_bytes(cache[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&cache[8..8 + header_len]).unwrap();
    let paths: Vec<String> = serde_json::from_value(header["paths"].clone()).unwrap();
    let mirrored: Vec<&String> = paths.iter().filter(|p| p.ends_with("#mirrored")).collect();
    assert_eq!(mirrored.len(), 1, "{paths:?}");
    assert!(mirrored[0].contains("apple"), "{paths:?}");
}

#[test]
fn the_fine_tune_form_reaches_the_run_with_its_seed_and_survives_a_restart_as_does_the_runs_log() {
    use textok_studio::gui::finetune::Target;
    let fixture = fixture();
    let mut harness = fine_tune_harness(&fixture, &[("apple", "a red apple")], 1, 1);
    assert!(harness.query_by_label("Seed").is_some());
    harness.get_by_label("DiT generator").click();
    {
        let form = &mut harness.state_mut().finetune.form;
        form.seed = 7;
        form.learning_rate = 2e-4;
        form.time_limit_minutes = 30.0;
    }
    harness.step();
    harness.get_by_label("Start").click();
    wait_idle(&mut harness, "the DiT's run");
    assert!(
        error_notices(harness.state()).is_empty(),
        "{:?}",
        error_notices(harness.state())
    );
    let runs = list_runs(&fixture.data_dir());
    assert_eq!(runs.len(), 1);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["seed"], 7, "{config}");
    assert_eq!(config["learning_rate"], 2e-4, "{config}");
    let form = harness.state().finetune.form.clone();
    assert_eq!(form.target, Target::Dit);

    // The state file is written within a second of the change; the next window has the form.
    std::thread::sleep(Duration::from_millis(1100));
    harness.step();
    drop(harness);
    let mut again = harness_on(&fixture, Pane::FineTune);
    assert_eq!(again.state().finetune.form, form);

    // The run's logged loss can be shown again after the restart.
    again.step();
    assert!(
        again
            .state()
            .finetune
            .live()
            .lock()
            .unwrap()
            .losses
            .is_empty()
    );
    again.get_by_label("Show").click();
    wait_until(
        &mut again,
        "the run's log",
        Duration::from_secs(30),
        |app| app.finetune.shown_run().is_some(),
    );
    let logged = again.state().finetune.live().lock().unwrap().losses.clone();
    assert_eq!(logged.len(), 1, "one step was trained: {logged:?}");
    assert_eq!(logged[0][0], 1.0);
    again.step();
    assert!(
        again
            .query_by_label_contains("as logged (to step 1)")
            .is_some()
    );
}

#[test]
fn a_runs_log_gives_its_losses_and_validation_reports_and_skips_broken_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("log.jsonl"),
        concat!(
            r#"{"event":"step","step":1,"loss":0.9}"#,
            "\n",
            r#"{"event":"eval","held_out":true,"images":4,"mean_psnr":18.5,"psnr":[[32,15.0],[64,22.0]],"step":1}"#,
            "\n",
            r#"{"event":"step","step":2,"loss":0.7}"#,
            "\n",
            r#"{"event":"eval","step":2,"psn"#,
            "\n",
        ),
    )
    .unwrap();
    let logged = textok_studio::gui::finetune::logged_run(dir.path());
    assert_eq!(logged.losses, vec![[1.0, 0.9], [2.0, 0.7]]);
    assert_eq!(logged.evals.len(), 1, "the line cut short is skipped");
    assert_eq!(logged.evals[0].psnr, vec![(32, 15.0), (64, 22.0)]);
    assert!(logged.evals[0].held_out);
    // A run without a log (deleted meanwhile, say) shows nothing rather than failing.
    let empty = textok_studio::gui::finetune::logged_run(&dir.path().join("gone"));
    assert!(empty.losses.is_empty() && empty.evals.is_empty());
}

#[test]
fn a_saved_fine_tune_form_out_of_range_or_unreadable_loads_as_a_usable_one() {
    use textok_studio::gui::finetune::FineTuneForm;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(state::STATE_FILE);
    // Numbers outside the widgets' limits are brought inside them.
    std::fs::write(
        &path,
        r#"{"fine_tune": {"steps": 0, "batch": 9999, "learning_rate": 5.0, "seed": 3}}"#,
    )
    .unwrap();
    let loaded = state::load(dir.path());
    assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
    let form = loaded.state.fine_tune;
    assert_eq!(
        (form.steps, form.batch, form.seed),
        (1, FineTuneForm::MAX_BATCH, 3)
    );
    assert_eq!(form.learning_rate, *FineTuneForm::LEARNING_RATES.end());
    // A form this version cannot read (a later version's target) gives the defaults and
    // keeps the rest of the state.
    std::fs::write(
        &path,
        r#"{"recent_prompts": ["a red apple"], "fine_tune": {"target": "Vae", "seed": 3}}"#,
    )
    .unwrap();
    let loaded = state::load(dir.path());
    assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
    assert_eq!(loaded.state.fine_tune, FineTuneForm::default());
    assert_eq!(loaded.state.recent_prompts, vec!["a red apple".to_string()]);
}

#[test]
fn fine_tuning_the_generation_decoder_keeps_the_tokens_and_serves_generate() {
    use textok_studio::gui::finetune::Target;
    let fixture = fixture();
    write_generation_decoder(&fixture);
    let mut harness = fine_tune_harness(
        &fixture,
        &[("apple", "a red apple"), ("penguin", "a penguin")],
        2,
        2,
    );
    harness
        .get_by_label("TexTok decoder for generation")
        .click();
    harness.step();
    assert_eq!(
        harness.state().finetune.form.target,
        Target::GenerationDecoder
    );
    harness.get_by_label("Start").click();
    wait_idle(&mut harness, "the generation decoder's run");
    assert!(
        error_notices(harness.state()).is_empty(),
        "{:?}",
        error_notices(harness.state())
    );
    let runs = list_runs(&fixture.data_dir());
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].target, Target::GenerationDecoder, "{runs:?}");
    assert!(runs[0].finished && runs[0].has_weights, "{runs:?}");
    let run_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(run_config["freeze_encoder"], true, "{run_config}");
    // It starts from the decoder Generate uses, not from Compare's TexTok.
    assert_eq!(
        run_config["init_from"],
        fixture.shipped.generation_decoder.display().to_string()
    );
    assert_eq!(
        run_config["token_noise"],
        textok_studio::gui::finetune::GENERATION_TOKEN_NOISE
    );
    // At the budgets the fixture's DiT was trained on (32..=128), the only ones it generates.
    assert_eq!(
        (&run_config["min_budget"], &run_config["max_budget"]),
        (&serde_json::json!(32), &serde_json::json!(128))
    );
    let weights = runs[0].dir.join("ema.safetensors");
    assert_eq!(
        textok_studio::model::textok::TexTok::encoder_sha256(&weights).unwrap(),
        textok_studio::model::textok::TexTok::encoder_sha256(&fixture.shipped.textok).unwrap(),
        "the tokens stay as they were"
    );
    harness.step();
    harness.get_by_label_contains("TexTok decoder for generation · finished");
    harness.get_by_label("Use this model").click();
    harness.step();
    let settings = &harness.state().app.state.settings;
    assert_eq!(settings.generation_decoder.as_ref(), Some(&weights));
    assert_eq!(settings.textok, None, "Compare keeps its TexTok");
    // The engines follow the settings on the next frame.
    harness.step();
    assert_eq!(
        harness.state().app.engines.key().generation_decoder_path(),
        weights
    );
    harness.get_by_label("Revert to the shipped models").click();
    harness.step();
    assert_eq!(harness.state().app.state.settings.generation_decoder, None);
}

#[test]
fn a_generator_that_fails_to_load_leaves_the_tokenizers_and_their_results_alone() {
    use textok_studio::gui::engines::EngineStatus;
    let fixture = fixture();
    let mut harness = harness(apple_in_compare(&fixture));
    wait_for_the_first_reconstructions(&mut harness);
    let loaded = |harness: &mut Harness<'static, StudioApp>| match harness
        .state_mut()
        .app
        .engines
        .reconstruct()
    {
        EngineStatus::Ready(engine) => engine,
        _ => panic!("the tokenizers are loaded"),
    };
    let tokenizers = loaded(&mut harness);
    let generation = harness.state().app.engines.generation();

    // Another (broken) DiT: only the generator is loaded again, and fails.
    let bogus = fixture.dir.path().join("bogus-dit.safetensors");
    std::fs::write(&bogus, b"garbage").unwrap();
    harness.state_mut().app.state.settings.dit = Some(bogus.clone());
    harness.state_mut().pane = Pane::Generate;
    wait_idle(&mut harness, "the failed load");
    harness.step();
    assert!(harness.query_by_label("Retry").is_some());
    assert_eq!(harness.state().app.engines.generation(), generation);
    assert!(std::sync::Arc::ptr_eq(&tokenizers, &loaded(&mut harness)));
    assert_eq!(
        reconstructions(harness.state()),
        2,
        "Compare's results stay"
    );

    // Retry loads the generator alone again.
    assert!(harness.query_by_label("Model files in Settings…").is_some());
    // The file is fixed (say, a download finished): Retry loads the generator alone again.
    std::fs::copy(&fixture.shipped.dit, &bogus).unwrap();
    harness.get_by_label("Retry").click();
    harness.step();
    wait_idle(&mut harness, "the second try");
    assert!(matches!(
        harness.state_mut().app.engines.generate(),
        EngineStatus::Ready(_)
    ));
    assert!(std::sync::Arc::ptr_eq(&tokenizers, &loaded(&mut harness)));
    assert_eq!(harness.state().app.engines.generation(), generation);

    // With the file broken again, the failure offers the way to Settings.
    std::fs::write(&bogus, b"garbage").unwrap();
    harness.state_mut().app.engines.reload();
    harness.step();
    wait_idle(&mut harness, "the third load");
    harness.step();
    harness.get_by_label("Model files in Settings…").click();
    harness.step();
    assert_eq!(harness.state().pane, Pane::Settings);
}

#[test]
fn settings_switch_the_device_and_the_models_follow() {
    let fixture = fixture();
    let mut options = fixture.options();
    options.open = vec![sample("apple")];
    options.pane = Some(Pane::Settings);
    let mut harness = harness(options);
    harness.step();
    let before = harness.state().app.engines.generation();
    harness.get_by_label("CPU").click();
    harness.step();
    harness.step();
    assert_eq!(harness.state().app.state.settings.device, DeviceChoice::Cpu);
    assert!(
        harness.state().app.engines.generation() > before,
        "engines reload on a device change"
    );
    assert!(harness.query_by_label_contains("Memory in use").is_some());
    // The Compare pane loads its models on the chosen device.
    harness.get_by_label("Compare").click();
    wait_until(
        &mut harness,
        "models on the CPU",
        Duration::from_secs(60),
        |app| {
            idle(app)
                && app
                    .app
                    .engines
                    .device_description()
                    .is_some_and(|d| d.starts_with("CPU"))
        },
    );
}

#[test]
fn a_model_path_can_be_typed_where_no_file_dialog_opens() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Settings);
    wait_for_the_adapter_list(&mut harness);
    // The fixture has no generation decoder: Settings says Generate uses the TexTok.
    harness.get_by_label_contains(&format!(
        "Generate decodes with: {} (the shipped TexTok: the models folder has no generation decoder)",
        fixture.shipped.textok.display()
    ));
    let use_typed = |harness: &mut Harness<'static, StudioApp>, path: &str, button: &str| {
        harness.get_by_label("Or a checkpoint path:").focus();
        harness.step();
        harness
            .get_by_label("Or a checkpoint path:")
            .type_text(path);
        harness.step();
        harness.get_by_label(button).click();
        harness.step();
    };
    let missing = fixture.dir.path().join("no-such.safetensors");
    use_typed(&mut harness, missing.to_str().unwrap(), "Use as DiT");
    assert_eq!(harness.state().app.state.settings.dit, None);
    let errors = error_notices(harness.state());
    assert!(
        errors.iter().any(|e| e.contains("no such file")),
        "{errors:?}"
    );
    // The mistyped path stays to be mended; here it is replaced.
    assert_eq!(
        harness.state().settings.typed_path,
        missing.to_str().unwrap()
    );
    harness.state_mut().settings.typed_path.clear();
    let copy = fixture.dir.path().join("my-dit.safetensors");
    std::fs::copy(&fixture.shipped.dit, &copy).unwrap();
    use_typed(&mut harness, copy.to_str().unwrap(), "Use as DiT");
    assert_eq!(harness.state().app.state.settings.dit, Some(copy));
    assert!(harness.state().settings.typed_path.is_empty());
}

#[test]
fn settings_defaults_apply_to_generate_and_compare_and_generate_resets_to_them() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Settings);
    // The start-up work and the adapter list first: a status line either changes moves the
    // buttons between the frame that places them and the click (under a loaded machine the
    // click then missed Apply).
    wait_idle(&mut harness, "the start-up work");
    wait_for_the_adapter_list(&mut harness);
    {
        let state = &mut harness.state_mut().app.state;
        state.settings.default_budget = 96;
        state.settings.default_steps = 25;
        state.settings.default_cfg = 2.0;
        state.compare_budget = Some(128);
        state.generate.caption = "a red apple".into();
        state.generate.count = 3;
    }
    harness
        .get_by_label("Apply to Generate and Compare")
        .click();
    harness.step();
    let state = &harness.state().app.state;
    let form = &state.generate;
    assert_eq!((form.tokens, form.steps, form.cfg), (96, 25, 2.0));
    assert_eq!((form.caption.as_str(), form.count), ("a red apple", 3));
    assert_eq!(
        state.compare_budget, None,
        "Compare follows the default again"
    );

    // Generate's Reset returns a changed form to the defaults.
    let form = &mut harness.state_mut().app.state.generate;
    (form.tokens, form.steps, form.cfg) = (256, 100, 7.5);
    harness.get_by_label("Generate").click();
    harness.step();
    harness
        .get_by_label("Reset tokens, steps and guidance")
        .click();
    harness.step();
    let form = &harness.state().app.state.generate;
    assert_eq!((form.tokens, form.steps, form.cfg), (96, 25, 2.0));
}

#[test]
fn a_change_waiting_for_its_save_keeps_a_frame_scheduled_until_it_is_written() {
    let fixture = fixture();
    let mut harness = harness(fixture.options());
    wait_idle(&mut harness, "the start");
    std::thread::sleep(Duration::from_millis(1100));
    harness.step();
    let repaint_delay = |harness: &Harness<'static, StudioApp>| {
        harness.output().viewport_output[&egui::ViewportId::ROOT].repaint_delay
    };
    let saved_prompts = || state::load(&fixture.data_dir()).state.recent_prompts;
    // A change right after a save waits for the next one, with a frame scheduled for it ...
    harness
        .state_mut()
        .app
        .state
        .recent_prompts
        .push("a blue whale".into());
    harness.step();
    assert!(saved_prompts().is_empty(), "saved within the second");
    assert!(repaint_delay(&harness) <= Duration::from_secs(1));
    // ... which writes it (on the writer's thread, while frames stay scheduled to collect the
    // outcome); then nothing more is scheduled.
    std::thread::sleep(Duration::from_millis(1100));
    harness.step();
    let started = Instant::now();
    while saved_prompts() != ["a blue whale"] {
        assert!(started.elapsed() < Duration::from_secs(10), "never written");
        assert!(repaint_delay(&harness) <= Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(10));
        harness.step();
    }
    harness.step();
    harness.step();
    assert!(repaint_delay(&harness) > Duration::from_secs(60));
}

#[test]
fn the_window_icon_decodes_to_a_square_picture() {
    let icon = textok_studio::gui::app_icon().expect("the built-in icon decodes");
    assert_eq!(icon.width, icon.height);
    assert!(icon.width >= 64, "{}", icon.width);
    assert_eq!(icon.rgba.len(), (icon.width * icon.height * 4) as usize);
    // Not blank: it has transparent corners and opaque pixels of several colours.
    let opaque: std::collections::HashSet<&[u8]> =
        icon.rgba.chunks(4).filter(|p| p[3] == 255).collect();
    assert!(
        icon.rgba[3] == 0 && opaque.len() > 4,
        "{} colours",
        opaque.len()
    );
}

#[test]
fn compare_shader_parses_and_validates() {
    let module = naga::front::wgsl::parse_str(textok_studio::gui::wipe::COMPARE_SHADER)
        .expect("compare.wgsl parses");
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .expect("compare.wgsl validates");
    let entry_points: Vec<&str> = module
        .entry_points
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(entry_points, ["vs_main", "fs_main"]);
}

/// Rendered with wgpu (lavapipe in CI): the wipe and difference views go through the WGSL shader.
#[test]
fn wipe_and_difference_views_render_through_the_shader() {
    if !wgpu_available() {
        eprintln!("skipped: no wgpu adapter (set TEXTOK_REQUIRE_WGPU=1 to make this a failure)");
        return;
    }
    let fixture = fixture();
    let mut harness = wgpu_harness(apple_in_compare(&fixture));
    assert!(
        harness.state().app.wgpu_views,
        "the shader pipeline is installed"
    );
    harness.get_by_label("Wipe").click();
    wait_for_the_first_reconstructions(&mut harness);
    harness.step();
    harness.snapshot("compare_wipe");
    harness.get_by_label("Difference").click();
    harness.step();
    harness.step();
    harness.snapshot("compare_difference");
}

fn wgpu_available() -> bool {
    let required = std::env::var_os("TEXTOK_REQUIRE_WGPU").is_some();
    let found = !textok_studio::device::list_adapters().is_empty();
    assert!(
        found || !required,
        "TEXTOK_REQUIRE_WGPU is set but wgpu finds no adapter"
    );
    found
}

/// The real binary opens its window under Xvfb, renders the Compare pane for an asset image on
/// the shipped models (or their labelled stand-ins), saves a screenshot and exits 0.
#[test]
fn the_app_window_opens_under_xvfb_and_saves_a_screenshot() {
    let has_xvfb = std::process::Command::new("xvfb-run")
        .arg("--help")
        .output()
        .is_ok();
    if !has_xvfb {
        assert!(
            std::env::var_os("TEXTOK_REQUIRE_XVFB").is_none(),
            "TEXTOK_REQUIRE_XVFB is set but xvfb-run is missing"
        );
        eprintln!("skipped: xvfb-run is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("compare.png");
    let output = std::process::Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_textok-studio"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--pane", "compare", "--open"])
        .arg(sample("apple"))
        .arg("--screenshot")
        .arg(&shot)
        .args(["--quit-after", "240"])
        .output()
        .expect("xvfb-run starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the app failed: {stderr}");
    let image = image::open(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}); stderr: {stderr}"))
        .to_rgb8();
    assert!(
        image.width() >= 640 && image.height() >= 400,
        "{}x{}",
        image.width(),
        image.height()
    );
    let first = image.get_pixel(0, 0);
    assert!(
        image.pixels().any(|p| p != first),
        "the screenshot is blank"
    );
    // The state was saved on exit with the opened image in the library.
    let saved = state::load(&dir.path().join("data"));
    assert!(
        saved
            .state
            .library
            .iter()
            .any(|item| item.path.ends_with("apple.png"))
    );
}

/// Writes the README's pane screenshots (`assets/screenshots/*.png`), rendered with wgpu:
/// `cargo test --test app readme_screenshots -- --ignored`. Uses the shipped models where they
/// exist and the tiny test models otherwise.
#[test]
#[ignore = "writes the README's screenshots"]
fn readme_screenshots() {
    let fixture = fixture();
    let shipped = ShippedModels::from_models_dir();
    let mut options = fixture.options();
    // The shipped models where they exist (the tiny fixtures stand in for the rest).
    if shipped.textok.exists() && shipped.baseline.exists() {
        options.shipped.textok = shipped.textok;
        options.shipped.baseline = shipped.baseline;
    }
    if shipped.dit.exists() {
        options.shipped.dit = shipped.dit;
    }
    options.shipped.generation_decoder = shipped.generation_decoder;
    options.open = ["penguin", "apple", "lizard", "ambulance", "bread-and-wine"]
        .iter()
        .map(|name| sample(name))
        .filter(|path| path.exists())
        .collect();
    let out = repo_path("assets/screenshots");
    std::fs::create_dir_all(&out).unwrap();
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 760.0))
        .wgpu()
        .build_eframe(move |cc| StudioApp::new(cc, options));
    let shoot = |harness: &mut Harness<'_, StudioApp>, name: &str| {
        for _ in 0..3 {
            harness.step();
        }
        let image = harness.render().expect("wgpu renders");
        image.save(out.join(format!("{name}.png"))).unwrap();
    };
    // Library with thumbnails.
    harness.state_mut().pane = Pane::Library;
    wait_idle(&mut harness, "thumbnails");
    std::thread::sleep(Duration::from_millis(500));
    shoot(&mut harness, "library");
    // Compare: the grid of budgets.
    harness.state_mut().pane = Pane::Compare;
    harness.step();
    harness.get_by_label("All budgets").click();
    wait_until(&mut harness, "the grid", Duration::from_secs(300), |app| {
        idle(app) && reconstructions(app) == 8
    });
    shoot(&mut harness, "compare");
    // Generate with two results.
    harness.state_mut().pane = Pane::Generate;
    {
        let form = &mut harness.state_mut().app.state.generate;
        // A caption in the style of the training corpus, which the shipped DiT knows.
        form.caption = "red apple, an emoji (food & drink, food fruit); apple, fruit, red".into();
        form.steps = 50;
        form.count = 4;
        form.random_seed = false;
    }
    wait_until(
        &mut harness,
        "the generator",
        Duration::from_secs(120),
        idle,
    );
    harness.step();
    harness.get_by_label("Generate images").click();
    harness.step();
    wait_until(&mut harness, "images", Duration::from_secs(300), |app| {
        idle(app) && app.app.state.gallery.len() == 4
    });
    std::thread::sleep(Duration::from_millis(500));
    shoot(&mut harness, "generate");
    // Fine-tune: a few steps on the library.
    harness.state_mut().pane = Pane::FineTune;
    {
        let form = &mut harness.state_mut().finetune.form;
        form.steps = 30;
        form.batch = 2;
    }
    harness.step();
    harness.get_by_label("Start").click();
    wait_until(
        &mut harness,
        "the fine-tune",
        Duration::from_secs(600),
        idle,
    );
    shoot(&mut harness, "finetune");
    harness.state_mut().pane = Pane::Settings;
    wait_idle(&mut harness, "the start-up work");
    wait_for_the_adapter_list(&mut harness);
    shoot(&mut harness, "settings");
}

/// A file dropped onto the window, as the windowing layer reports it.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn a_folder_dropped_on_fine_tune_is_its_training_folder_and_model_files_point_to_settings() {
    let fixture = fixture();
    let folder = fixture.dir.path().join("my pictures");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(sample("lizard"), folder.join("lizard.png")).unwrap();
    let mut harness = harness_on(&fixture, Pane::FineTune);
    harness.step();
    let drop = |harness: &mut Harness<'static, StudioApp>, paths: Vec<PathBuf>| {
        harness.input_mut().dropped_files.extend(
            paths
                .into_iter()
                .map(|path| std::sync::Arc::new(Dropped(path)) as egui::DroppedFileHandle),
        );
        harness.step();
    };
    drop(&mut harness, vec![folder.clone()]);
    let app = harness.state();
    assert_eq!(app.pane, Pane::FineTune, "the pane stays");
    assert_eq!(app.finetune.form.folder, folder.display().to_string());
    assert!(!app.finetune.form.use_library);
    assert_eq!(app.app.imports_running(), 0, "nothing imported");

    // A model file is no picture: no "skipped" error, and Settings is where models are chosen.
    drop(&mut harness, vec![fixture.shipped.dit.clone()]);
    let app = harness.state();
    assert_eq!(app.pane, Pane::Settings);
    assert!(error_notices(app).is_empty(), "{:?}", error_notices(app));
    assert!(
        all_notices(app)
            .iter()
            .any(|m| m.contains("is a model file") && m.contains("Settings")),
        "{:?}",
        all_notices(app)
    );
    assert_eq!(app.app.imports_running(), 0);
    assert!(app.app.state.library.is_empty());
}

#[test]
fn files_and_folders_dropped_anywhere_land_in_the_library() {
    let fixture = fixture();
    let folder = fixture.dir.path().join("dropped");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(sample("lizard"), folder.join("lizard.png")).unwrap();
    std::fs::write(folder.join("lizard.txt"), "a green lizard").unwrap();
    let mut harness = harness_on(&fixture, Pane::Generate);
    harness.step();
    let notes = fixture.dir.path().join("notes.md");
    std::fs::write(&notes, "not a picture").unwrap();
    harness.input_mut().dropped_files.extend(
        [folder.clone(), sample("apple"), notes]
            .map(|path| std::sync::Arc::new(Dropped(path)) as egui::DroppedFileHandle),
    );
    harness.step();
    wait_until(&mut harness, "the import", Duration::from_secs(30), |app| {
        app.app.state.library.len() == 2
    });
    // What was skipped stays on screen until dismissed, with why.
    assert!(
        error_notices(harness.state())
            .iter()
            .any(|m| m.contains("skipped 1") && m.contains("notes.md")),
        "{:?}",
        error_notices(harness.state())
    );
    let app = harness.state();
    assert_eq!(app.pane, Pane::Library, "a drop shows the Library");
    let captions: Vec<&str> = app
        .app
        .state
        .library
        .iter()
        .map(|i| i.caption.as_str())
        .collect();
    assert_eq!(captions.len(), 2, "{captions:?}");
    assert!(captions.contains(&"a green lizard"));
    assert!(
        app.app
            .notices
            .all()
            .any(|m| m.contains("added 2 image(s)"))
    );

    // A cancelled import adds nothing, even once its scan has finished.
    let more = fixture.dir.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    std::fs::copy(sample("penguin"), more.join("penguin.png")).unwrap();
    harness.state_mut().app.import(&[more]);
    assert_eq!(harness.state().app.imports_running(), 1);
    // What the Library's "Cancel import" button does (a scan this small would finish before
    // a frame could show the button).
    harness.state_mut().app.cancel_imports();
    assert_eq!(harness.state().app.imports_running(), 0);
    std::thread::sleep(Duration::from_millis(300));
    harness.step();
    assert_eq!(harness.state().app.state.library.len(), 2);
    assert!(
        harness
            .state()
            .app
            .notices
            .all()
            .any(|m| m.contains("Import cancelled"))
    );
}

/// After ten frames of a pane showing thousands of pictures: one screen's thumbnails were
/// requested, and frames stayed fast.
fn assert_only_the_visible_rows_load(harness: &mut Harness<'static, StudioApp>) {
    for _ in 0..10 {
        harness.step();
    }
    let app = harness.state();
    assert!(
        app.app.thumbnails.len() < 200,
        "{} thumbnails requested for one screen",
        app.app.thumbnails.len()
    );
    assert!(
        app.app.frame_times.quantile_ms(0.5) < 50.0,
        "median frame {:.1} ms",
        app.app.frame_times.quantile_ms(0.5)
    );
}

#[test]
fn thumbnails_are_decoded_at_the_screens_pixel_density() {
    use textok_studio::gui::images::{THUMBNAIL_SIZE, ThumbnailState, Thumbnails};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.png");
    image::RgbImage::from_pixel(1000, 1000, image::Rgb([200, 10, 10]))
        .save(&path)
        .unwrap();
    let ctx = egui::Context::default();
    let mut thumbnails = Thumbnails::new(std::sync::Arc::new(|| {}));
    let side_at = |thumbnails: &mut Thumbnails, pixels_per_point: f32| {
        ctx.set_pixels_per_point(pixels_per_point);
        // Takes effect with the next frame.
        let mut output = ctx.run_ui(egui::RawInput::default(), |_| {});
        output.textures_delta.clear();
        assert_eq!(ctx.pixels_per_point(), pixels_per_point);
        let started = Instant::now();
        loop {
            thumbnails.receive(&ctx);
            if let ThumbnailState::Ready(texture) = thumbnails.get(&path) {
                return texture.size();
            }
            assert!(started.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let side = THUMBNAIL_SIZE as usize;
    assert_eq!(side_at(&mut thumbnails, 1.0), [side, side]);
    // Moved to a HiDPI screen: decoded again, twice as many pixels a side.
    assert_eq!(side_at(&mut thumbnails, 2.0), [2 * side, 2 * side]);
    assert_eq!(side_at(&mut thumbnails, 1.5), [2 * side, 2 * side]);
    assert_eq!(side_at(&mut thumbnails, 1.0), [side, side]);
}

#[test]
fn thumbnails_scrolled_away_are_dropped_from_the_queue_and_textures_are_bounded() {
    use textok_studio::gui::images::{ThumbnailState, Thumbnails};
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..300)
        .map(|i| {
            let path = dir.path().join(format!("{i:03}.png"));
            image::RgbImage::from_pixel(16, 16, image::Rgb([i as u8, 0, 0]))
                .save(&path)
                .unwrap();
            path
        })
        .collect();
    let ctx = egui::Context::default();
    let mut thumbnails = Thumbnails::new(std::sync::Arc::new(|| {}));
    thumbnails.set_texture_limit(20);
    // A fast scroll: every row asked for once, then only the last screen (10) keeps asking.
    thumbnails.receive(&ctx);
    for path in &paths {
        let _ = thumbnails.get(path);
    }
    let visible = &paths[290..];
    // The next frame asks for the visible ones only; the one after drops the rest.
    thumbnails.receive(&ctx);
    for path in visible {
        let _ = thumbnails.get(path);
    }
    thumbnails.receive(&ctx);
    assert!(
        thumbnails.queued() <= visible.len(),
        "{} requests still queued after the rows scrolled away",
        thumbnails.queued()
    );
    let started = Instant::now();
    loop {
        thumbnails.receive(&ctx);
        let arrived = visible
            .iter()
            .filter(|path| matches!(thumbnails.get(path), ThumbnailState::Ready(_)))
            .count();
        assert!(thumbnails.textures() <= 20);
        if arrived == visible.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{arrived} arrived"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let decoded = paths.iter().filter(|p| thumbnails.arrived(p)).count();
    assert!(
        decoded < 100,
        "{decoded} of 300 decoded: the scrolled-past rows were too"
    );

    // Only the last three stay on screen: the rest are dropped down to the limit, least
    // recently shown first.
    thumbnails.set_texture_limit(5);
    for _ in 0..3 {
        thumbnails.receive(&ctx);
        for path in &paths[297..] {
            let _ = thumbnails.get(path);
        }
    }
    assert!(thumbnails.textures() <= 5, "{}", thumbnails.textures());
    assert!(paths[297..].iter().all(|path| thumbnails.arrived(path)));

    // A file that cannot be read fails, and is not retried at once.
    let missing = dir.path().join("missing.png");
    thumbnails.receive(&ctx);
    let _ = thumbnails.get(&missing);
    let started = Instant::now();
    while !thumbnails.arrived(&missing) {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2));
        thumbnails.receive(&ctx);
        let _ = thumbnails.get(&missing);
    }
    assert!(matches!(
        thumbnails.get(&missing),
        ThumbnailState::Failed(_)
    ));
    assert_eq!(thumbnails.queued(), 0);
}

#[test]
fn a_library_of_thousands_only_lays_out_and_decodes_the_visible_rows() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Library);
    harness.state_mut().app.state.library = (0..5000)
        .map(|i| LibraryItem {
            path: fixture.dir.path().join(format!("missing-{i:05}.png")),
            caption: format!("picture number {i}"),
        })
        .collect();
    assert_only_the_visible_rows_load(&mut harness);
}

#[test]
fn the_library_filters_by_caption_words_file_name_and_missing_captions() {
    let fixture = fixture();
    let mut harness = harness_on(&fixture, Pane::Library);
    // Every tenth picture has no caption yet.
    let caption = |i: usize| {
        if i.is_multiple_of(10) {
            String::new()
        } else {
            format!("Picture number {i}")
        }
    };
    harness.state_mut().app.state.library = (0..5000)
        .map(|i| LibraryItem {
            path: fixture.dir.path().join(format!("missing-{i:05}.png")),
            caption: caption(i),
        })
        .collect();
    harness.step();
    assert!(harness.query_by_label("5000 images").is_some());

    // Words match in any case and order, in the caption or the file name.
    let filter_field = |node: &egui_kittest::kittest::AccessKitNode<'_>| {
        node.placeholder() == Some("Filter: caption or file name")
    };
    harness.get_by(filter_field).focus();
    harness.step();
    harness.get_by(filter_field).type_text("42 PICTURE");
    harness.step();
    let expected = (0..5000)
        .filter(|&i: &usize| !i.is_multiple_of(10) && i.to_string().contains("42"))
        .count();
    let shown = harness
        .state()
        .app
        .library_filter
        .shown(&harness.state().app.state.library);
    assert_eq!(shown.len(), expected);
    assert!(
        harness
            .query_by_label(&format!("{expected} of 5000 images"))
            .is_some()
    );
    // Filtering thousands every frame keeps frames fast and still loads only what is visible.
    assert_only_the_visible_rows_load(&mut harness);

    harness.state_mut().app.library_filter.words = "MISSING-00017".into();
    harness.step();
    let app = harness.state();
    let shown = app.app.library_filter.shown(&app.app.state.library);
    assert_eq!(shown, [17]);

    harness.state_mut().app.library_filter.words.clear();
    harness.get_by_label("Uncaptioned only").click();
    harness.step();
    assert!(harness.query_by_label("500 of 5000 images").is_some());
    harness.get_by_label("Show all").click();
    // The count is drawn before the button: one frame clears the filter, the next shows it.
    harness.step();
    harness.step();
    assert!(harness.query_by_label("5000 images").is_some());

    harness.state_mut().app.library_filter.words = "no such words".into();
    harness.step();
    assert!(
        harness
            .query_by_label("No image matches the filter.")
            .is_some()
    );
}

#[test]
fn the_library_exports_as_a_dataset_whose_files_keep_their_names() {
    use textok_studio::data::dataset::scan;
    use textok_studio::gui::finetune::export_library;
    let dir = tempfile::tempdir().unwrap();
    let originals = dir.path().join("mine");
    std::fs::create_dir_all(&originals).unwrap();
    let mut items = Vec::new();
    // 254 bytes with ".png": with the index added, longer than a file name may be.
    let long = "n".repeat(250);
    for (name, caption) in [
        ("cat", "a cat"),
        ("dog", "  "),
        ("cat 2\\b", "another cat"),
        (long.as_str(), "a long name"),
    ] {
        let path = originals.join(format!("{name}.png"));
        image::RgbImage::new(16, 16).save(&path).unwrap();
        items.push(LibraryItem {
            path,
            caption: caption.into(),
        });
    }
    let data = dir.path().join("data");
    assert_eq!(
        export_library(&items, &data, &CancelToken::new(), &|_, _| {}).unwrap(),
        3,
        "the uncaptioned dog is left out"
    );
    let (entries, skipped) = scan(&data).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let listed: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.relative.as_str(), e.caption.as_str()))
        .collect();
    let long_copy = format!("00003-{}.png", "n".repeat(64));
    assert_eq!(
        listed,
        [
            ("00000-cat.png", "a cat"),
            ("00002-cat_2_b.png", "another cat"),
            (long_copy.as_str(), "a long name"),
        ]
    );

    // The copy reports how far it got and stops when cancelled.
    let reports = std::cell::RefCell::new(Vec::new());
    let again = dir.path().join("again");
    export_library(&items, &again, &CancelToken::new(), &|done, total| {
        reports.borrow_mut().push((done, total))
    })
    .unwrap();
    assert_eq!(reports.into_inner(), [(0, 3), (1, 3), (2, 3)]);
    let cancel = CancelToken::new();
    cancel.cancel();
    let stopped = dir.path().join("stopped");
    assert!(export_library(&items, &stopped, &cancel, &|_, _| {}).is_err());
    assert!(!stopped.join("captions.jsonl").exists());

    // A file gone since it was added is left out, and the progress counts to what is there.
    std::fs::remove_file(&items[0].path).unwrap();
    let reports = std::cell::RefCell::new(Vec::new());
    let fewer = dir.path().join("fewer");
    let written = export_library(&items, &fewer, &CancelToken::new(), &|done, total| {
        reports.borrow_mut().push((done, total))
    })
    .unwrap();
    assert_eq!(written, 2);
    assert_eq!(reports.into_inner(), [(0, 2), (1, 2)]);
    // All of them gone: the error says so and names one, not "no captioned images".
    for item in &items {
        let _ = std::fs::remove_file(&item.path);
    }
    let error = export_library(
        &items,
        &dir.path().join("none"),
        &CancelToken::new(),
        &|_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("none of the Library's 3 captioned images is where it was added")
            && error.contains("cat.png"),
        "{error}"
    );
}
