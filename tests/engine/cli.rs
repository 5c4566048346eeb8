//! The real binary, end to end.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use textok_studio::checkpoint::StoredPrecision;

use crate::common::*;

fn studio(args: &[&str], models_dir: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_textok-studio"));
    command.args(args);
    if let Some(dir) = models_dir {
        command.env("TEXTOK_MODELS_DIR", dir);
    }
    command.output().expect("binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A user error: non-zero exit and exactly one line on stderr.
fn assert_one_line_error(output: &Output, needle: &str) {
    assert!(!output.status.success(), "should fail: {}", stdout(output));
    let err = stderr(output);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

/// A dataset folder `dir/data` with the named sample images and their caption sidecars.
fn sample_dataset(dir: &Path, names: &[&str]) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for name in names {
        for extension in ["png", "txt"] {
            std::fs::copy(
                repo_path(&format!("assets/samples/{name}.{extension}")),
                data.join(format!("{name}.{extension}")),
            )
            .unwrap();
        }
    }
    data
}

fn save_tiny_pair(dir: &Path) -> (String, String) {
    let textok = dir.join("tiny-textok.safetensors");
    let baseline = dir.join("tiny-baseline.safetensors");
    let (model, config) = tiny(true, 31);
    model.save(&config, &textok, StoredPrecision::F16).unwrap();
    let (model, config) = tiny(false, 32);
    model
        .save(&config, &baseline, StoredPrecision::F16)
        .unwrap();
    (
        textok.to_string_lossy().into_owned(),
        baseline.to_string_lossy().into_owned(),
    )
}

#[test]
fn reconstruct_writes_images_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, baseline) = save_tiny_pair(dir.path());
    let out = dir.path().join("out");
    let image = repo_path("assets/samples/apple.png");
    let caption_file = repo_path("assets/samples/apple.txt");
    let output = studio(
        &[
            "reconstruct",
            "--image",
            image.to_str().unwrap(),
            "--caption-file",
            caption_file.to_str().unwrap(),
            "--tokens",
            "32,256",
            "--model",
            &textok,
            "--baseline",
            &baseline,
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("device: CPU"), "{text}");
    for name in [
        "original.png",
        "textok-32.png",
        "textok-256.png",
        "baseline-32.png",
        "baseline-256.png",
    ] {
        let path = out.join(name);
        let image = image::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((image.width(), image.height()), (32, 32), "{name}");
    }
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("TexTok ") || l.starts_with("Baseline "))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in rows {
        let psnr: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(psnr.is_finite() && psnr > 0.0, "{row}");
        // Each file says what made it, with the scores the table printed.
        let fields: Vec<&str> = row.split_whitespace().collect();
        let file = format!("{}-{}.png", fields[0].to_lowercase(), fields[1]);
        let chunks = png_text(&out.join(&file));
        assert_eq!(chunks["model"], fields[0], "{file}");
        assert_eq!(chunks["tokens"], fields[1], "{file}");
        assert_eq!(chunks["psnr-db"], fields[2], "{file}");
        assert_eq!(chunks["ssim"], fields[3], "{file}");
        let model = if fields[0] == "TexTok" {
            &textok
        } else {
            &baseline
        };
        assert_eq!(
            chunks["model-sha256"],
            textok_studio::files::sha256_file(Path::new(model)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn missing_shipped_tokenizers_are_replaced_by_labelled_random_models() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    // Only the text encoder is present.
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        repo_path("models/text-encoder"),
        models.join("text-encoder"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = studio(
        &[
            "reconstruct",
            "--image",
            repo_path("assets/samples/penguin.png").to_str().unwrap(),
            "--caption",
            "a penguin",
            "--tokens",
            "32",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ],
        Some(&models),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(text.matches("RANDOMLY INITIALISED").count(), 2, "{text}");
    assert!(
        image::open(out.join("textok-32.png")).unwrap().width() == 128,
        "small preset: 128 px"
    );
}

#[test]
fn reconstruct_keeps_earlier_results_and_reads_only_text_caption_files() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, _) = save_tiny_pair(dir.path());
    let out = dir.path().join("out");
    let apple = repo_path("assets/samples/apple.png");
    let run = |caption_args: &[&str], extra: &[&str]| {
        let mut args = vec![
            "reconstruct",
            "--image",
            apple.to_str().unwrap(),
            "--model",
            &textok,
            "--no-baseline",
            "--tokens",
            "32",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(caption_args);
        args.extend_from_slice(extra);
        studio(&args, None)
    };
    // A byte-order mark is not part of the caption.
    let bom = dir.path().join("bom.txt");
    std::fs::write(&bom, "\u{feff}a red apple\n").unwrap();
    let output = run(&["--caption-file", bom.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let original = out.join("original.png");
    assert_eq!(png_text(&original)["caption"], "a red apple");
    let first = std::fs::read(out.join("textok-32.png")).unwrap();

    // A second run into the same folder would replace the first one's files: refused, before
    // any model loads, and nothing is touched.
    let output = run(&["--caption", "a green pear"], &[]);
    assert_one_line_error(&output, "original.png, textok-32.png");
    assert!(
        stderr(&output).contains("--overwrite"),
        "{}",
        stderr(&output)
    );
    assert_eq!(png_text(&original)["caption"], "a red apple");
    assert_eq!(std::fs::read(out.join("textok-32.png")).unwrap(), first);
    // Asked to, it replaces them; a blank caption is allowed but noted.
    let output = run(&["--caption", "   "], &["--overwrite"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("note: the caption is empty"),
        "{}",
        stderr(&output)
    );
    assert_eq!(png_text(&original)["caption"], "   ");

    // Caption files that are not text: NUL bytes, an endless device (read only up to the
    // longest caption), a folder.
    let nul = dir.path().join("nul.txt");
    std::fs::write(&nul, [0u8; 64]).unwrap();
    assert_one_line_error(&run(&["--caption-file", nul.to_str().unwrap()], &[]), "NUL");
    #[cfg(unix)]
    assert_one_line_error(&run(&["--caption-file", "/dev/zero"], &[]), "NUL");
    let folder = dir.path().to_str().unwrap();
    assert_one_line_error(&run(&["--caption-file", folder], &[]), "is a folder");
}

#[test]
fn out_of_range_counts_and_unwritable_outputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    let huge = "1000000000000000";
    // Counts that would ask for petabytes: refused by the argument parser.
    for (args, flag) in [
        (
            vec!["gen-eval", "--data", folder, "--images", huge],
            "--images",
        ),
        (vec!["bench", "--repeats", huge], "--repeats"),
        (
            vec!["eval", "--data", folder, "--validation-percent", "200"],
            "--validation-percent",
        ),
        (
            vec!["eval", "--data", folder, "--sheet-rows", "0"],
            "--sheet-rows",
        ),
        // FD-EffNet needs two images.
        (vec!["eval", "--data", folder, "--limit", "1"], "--limit"),
        // A window that would never close by itself, or close at once.
        (vec!["--quit-after", "nan"], "--quit-after"),
        (vec!["--quit-after=-1"], "--quit-after"),
        (vec!["--quit-after", "0"], "--quit-after"),
        // 0 would evaluate at every step, or on no image at all.
        (
            vec!["train", "tokenizer", "--data", folder, "--eval-every", "0"],
            "--eval-every",
        ),
        (
            vec!["train", "tokenizer", "--data", folder, "--eval-images", "0"],
            "--eval-images",
        ),
    ] {
        let output = studio(&args, None);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr(&output).contains(flag), "{}", stderr(&output));
    }
    // Outputs that cannot be written: said before the evaluation, not after it.
    let missing_parent = dir.path().join("no/such/sheet.png");
    for args in [
        vec!["eval", "--data", "/no/such/data", "--json", folder],
        vec!["gen-eval", "--data", "/no/such/data", "--json", folder],
        vec![
            "gen-eval",
            "--data",
            "/no/such/data",
            "--sheet",
            missing_parent.to_str().unwrap(),
        ],
    ] {
        let output = studio(&args, None);
        let needle = if args.contains(&"--json") {
            "--json"
        } else {
            "--sheet"
        };
        assert_one_line_error(&output, needle);
    }
    assert_one_line_error(&studio(&["bench", "--steps", "0"], None), "--steps");
    // A split too small to score: said before any model loads (the models folder given here
    // does not exist, and no model is looked for).
    let data = sample_dataset(dir.path(), &["apple", "penguin", "lizard"]);
    let data = data.to_str().unwrap();
    let no_models = Some(Path::new("/no/such/models"));
    let output = studio(
        &["eval", "--data", data, "--validation-percent", "0"],
        no_models,
    );
    assert_one_line_error(&output, "0 captioned image(s) in the chosen split");
    // The training split shrinks as the validation percentage grows: the hint says so.
    let output = studio(
        &[
            "eval",
            "--data",
            data,
            "--split",
            "train",
            "--validation-percent",
            "100",
        ],
        no_models,
    );
    assert_one_line_error(&output, "a smaller --validation-percent");
    // With the whole folder there are enough: the run goes on, to the model it cannot read.
    let output = studio(
        &[
            "eval",
            "--data",
            data,
            "--split",
            "all",
            "--model",
            "/no/such.safetensors",
        ],
        no_models,
    );
    assert!(!output.status.success());
    assert!(
        !stderr(&output).contains("chosen split"),
        "{}",
        stderr(&output)
    );
    // gen-eval makes the same check first, with its own hint (it has no --split).
    let output = studio(
        &["gen-eval", "--data", data, "--validation-percent", "0"],
        no_models,
    );
    assert_one_line_error(&output, "try a larger --validation-percent");
    // A folder that exists but takes no files (even for root): said before any model loads or
    // any image is sampled, not when the first result is written.
    #[cfg(target_os = "linux")]
    let apple = repo_path("assets/samples/apple.png");
    #[cfg(target_os = "linux")]
    for args in [
        vec![
            "generate",
            "--caption",
            "a red circle",
            "--out",
            "/proc/self",
        ],
        vec![
            "reconstruct",
            "--image",
            apple.to_str().unwrap(),
            "--caption",
            "an apple",
            "--out",
            "/proc/self",
        ],
        vec!["eval", "--data", data, "--json", "/proc/self/eval.json"],
    ] {
        let output = studio(&args, no_models);
        assert_one_line_error(&output, "/proc/self");
        assert!(
            stderr(&output).contains("cannot write"),
            "{}",
            stderr(&output)
        );
    }
    // Training settings that are not numbers: refused before any data is read.
    let out = dir.path().join("run");
    for (trainer, flag, value, needle) in [
        ("tokenizer", "--lr", "NaN", "learning rate"),
        ("dit", "--lr", "inf", "learning rate"),
        (
            "tokenizer",
            "--checkpoint-minutes",
            "NaN",
            "checkpoint interval",
        ),
        ("dit", "--checkpoint-minutes", "0", "checkpoint interval"),
    ] {
        let output = studio(
            &[
                "train",
                trainer,
                "--data",
                "/no/such/data",
                "--steps",
                "10",
                flag,
                value,
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        );
        assert_one_line_error(&output, needle);
    }
}

#[test]
fn user_errors_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, _) = save_tiny_pair(dir.path());
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let apple = repo_path("assets/samples/apple.png");
    let apple = apple.to_str().unwrap();

    let output = studio(
        &[
            "reconstruct",
            "--image",
            "/no/such.png",
            "--caption",
            "x",
            "--out",
            out,
        ],
        None,
    );
    assert_one_line_error(&output, "/no/such.png");

    let output = studio(
        &[
            "reconstruct",
            "--image",
            apple,
            "--caption",
            "x",
            "--tokens",
            "300",
            "--out",
            out,
        ],
        None,
    );
    assert_one_line_error(&output, "300");

    let broken = dir.path().join("broken.safetensors");
    std::fs::write(&broken, b"garbage").unwrap();
    let output = studio(
        &[
            "reconstruct",
            "--image",
            apple,
            "--caption",
            "x",
            "--model",
            broken.to_str().unwrap(),
            "--device",
            "cpu",
            "--out",
            out,
        ],
        None,
    );
    assert_one_line_error(&output, "broken.safetensors");

    // A Baseline checkpoint where TexTok is expected.
    let (_, baseline) = save_tiny_pair(dir.path());
    let output = studio(
        &[
            "reconstruct",
            "--image",
            apple,
            "--caption",
            "x",
            "--model",
            &baseline,
            "--no-baseline",
            "--device",
            "cpu",
            "--out",
            out,
        ],
        None,
    );
    assert_one_line_error(&output, "Baseline");

    // A caption file far larger than any caption: read only as far as it can matter.
    let huge = dir.path().join("huge.txt");
    std::fs::write(&huge, "a very long caption ".repeat(500_000)).unwrap();
    let output = studio(
        &[
            "reconstruct",
            "--image",
            apple,
            "--caption-file",
            huge.to_str().unwrap(),
            "--model",
            &textok,
            "--no-baseline",
            "--tokens",
            "32",
            "--device",
            "cpu",
            "--out",
            out,
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("truncated to the first 32"),
        "{}",
        stdout(&output)
    );
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, [0x63, 0x61, 0x66, 0xE9, 0x20, 0x61]).unwrap();
    let output = studio(
        &[
            "reconstruct",
            "--image",
            apple,
            "--caption-file",
            latin1.to_str().unwrap(),
            "--out",
            out,
        ],
        None,
    );
    assert_one_line_error(&output, "not UTF-8");

    let output = studio(&["info", "/no/such.safetensors"], None);
    assert_one_line_error(&output, "such.safetensors");

    let output = studio(&["reconstruct", "--image", apple, "--out", out], None);
    assert!(!output.status.success(), "a caption is required");

    for (trainer, minutes) in [
        ("dit", "0"),
        ("dit", "-3"),
        ("tokenizer", "NaN"),
        ("tokenizer", "1e300"),
    ] {
        let limit = format!("--max-minutes={minutes}");
        let output = studio(
            &[
                "train",
                trainer,
                "--data",
                "/no/such/folder",
                "--steps",
                "10",
                &limit,
                "--out",
                out,
            ],
            None,
        );
        assert_one_line_error(&output, "--max-minutes");
    }
    let output = studio(
        &[
            "train",
            "dit",
            "--data",
            "/no/such/folder",
            "--steps",
            "10",
            "--ema-every",
            "0",
            "--out",
            out,
        ],
        None,
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--ema-every"),
        "{}",
        stderr(&output)
    );
    let _ = textok;
}

#[test]
fn info_describes_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, _) = save_tiny_pair(dir.path());
    let output = studio(&["info", &textok], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("kind:       textok-tokenizer"), "{text}");
    assert!(text.contains("F16"), "{text}");
    assert!(text.contains("\"text_conditioning\": true"), "{text}");
    let params: usize = text
        .lines()
        .find(|l| l.starts_with("parameters:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let (model, _) = tiny(true, 31);
    assert_eq!(params, burn::module::Module::num_params(&model));
    let encoder = textok_studio::model::textok::TexTok::encoder_sha256(Path::new(&textok)).unwrap();
    assert!(
        text.contains(&format!("encoder:    sha256 {encoder}")),
        "{text}"
    );
}

#[test]
fn eval_prints_the_table_and_writes_json_records() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, baseline) = save_tiny_pair(dir.path());
    let data = sample_dataset(dir.path(), &["apple", "penguin", "lizard"]);
    let json = dir.path().join("table.json");
    let sheet = dir.path().join("sheet.png");
    let output = studio(
        &[
            "eval",
            "--data",
            data.to_str().unwrap(),
            "--model",
            &textok,
            "--baseline",
            &baseline,
            "--tokens",
            "32,128",
            "--split",
            "all",
            "--device",
            "cpu",
            "--json",
            json.to_str().unwrap(),
            "--sheet",
            sheet.to_str().unwrap(),
            "--sheet-rows",
            "2",
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("FD-EffNet") && text.contains("TexTok vs Baseline"),
        "{text}"
    );
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(records.len(), 4);
    for record in &records {
        assert_eq!(record["images"], 3);
        assert!(["textok", "baseline"].contains(&record["model"].as_str().unwrap()));
        assert!([32, 128].contains(&record["tokens"].as_u64().unwrap()));
        for key in ["psnr", "ssim", "fd_effnet"] {
            let value = record[key].as_f64().unwrap();
            assert!(value.is_finite(), "{key} = {value}");
        }
        assert!(
            record["fd_effnet"].as_f64().unwrap() > 0.0,
            "random models do not reproduce the images: {record}"
        );
        assert_eq!(
            record["match_rate"], 1.0,
            "3 originals: each is within the 5 nearest"
        );
    }
    assert!(text.contains("match top-5"), "{text}");
    // 2 rows x (original + 2 budgets x 2 models) cells of 32 px with 4 px gutters.
    let sheet = image::open(&sheet).unwrap();
    assert_eq!((sheet.width(), sheet.height()), (5 * 36 + 4, 2 * 36 + 4));
}

/// A PNG's text chunks, by keyword.
fn png_text(path: &std::path::Path) -> std::collections::HashMap<String, String> {
    textok_studio::data::image::read_png_text(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

#[test]
fn the_regenerate_command_quotes_the_caption_and_takes_only_numbers() {
    use textok_studio::pipeline::{ShippedHashes, regenerate_command};
    let shipped = ShippedHashes::default();
    let regenerate_command = |text: &[(String, String)]| regenerate_command(text, &shipped);
    let text = |seed: &str| -> Vec<(String, String)> {
        [
            ("caption", "Bob's \"red\" $apple"),
            ("seed", seed),
            ("steps", "50"),
            ("cfg", "3"),
            ("tokens", "64"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    };
    assert_eq!(
        regenerate_command(&text("7")).unwrap(),
        "textok-studio generate --caption='Bob'\\''s \"red\" $apple' --tokens 64 --steps 50 \
         --cfg 3 --seed 7 --count 1 --out OUT"
    );
    // A caption that starts with a dash stays the flag's value, not a flag of its own.
    let mut dashed = text("7");
    dashed[0].1 = "- a red circle".into();
    let command = regenerate_command(&dashed).unwrap();
    use clap::Parser;
    let words = ["generate", "--caption=- a red circle", "--out", "OUT"];
    let parsed =
        textok_studio::cli::Cli::try_parse_from(std::iter::once("textok-studio").chain(words));
    match parsed.map(|cli| cli.command) {
        Ok(Some(textok_studio::cli::Command::Generate(args))) => {
            assert_eq!(args.caption, "- a red circle")
        }
        other => panic!("{other:?}"),
    }
    assert!(command.contains("--caption='- a red circle'"), "{command}");
    // An unknown tokenizer kind is not guessed at.
    let mut odd = text("7");
    odd.push(("tokenizer".into(), "other".into()));
    assert_eq!(regenerate_command(&odd), None);
    assert_eq!(regenerate_command(&text("7; rm -rf ~")), None);
    assert_eq!(
        regenerate_command(&text("7")[..4]),
        None,
        "no tokens: not a generated image"
    );
    // Made with a fine-tuned DiT and the default decoder: only the DiT is named.
    let mut tuned = text("7");
    tuned.push(("textok-sha256".into(), "aa".into()));
    tuned.push(("dit-sha256".into(), "cc".into()));
    let shipped = ShippedHashes {
        decoder: Some("aa".into()),
        textok: None,
        dit: Some("bb".into()),
    };
    let command = textok_studio::pipeline::regenerate_command(&tuned, &shipped).unwrap();
    assert!(command.contains("--dit DIT.safetensors"), "{command}");
    assert!(!command.contains("--model"), "{command}");
    // Both shipped: neither is named.
    let same = ShippedHashes {
        dit: Some("cc".into()),
        ..shipped
    };
    let command = textok_studio::pipeline::regenerate_command(&tuned, &same).unwrap();
    assert!(
        !command.contains("--dit") && !command.contains("--model"),
        "{command}"
    );
    // Decoded by the shipped TexTok, not the generation decoder `generate` now uses: that
    // file is named, quoted.
    let compare = ShippedHashes {
        decoder: Some("dd".into()),
        textok: Some(("aa".into(), "/m/it's.safetensors".into())),
        dit: Some("cc".into()),
    };
    let command = textok_studio::pipeline::regenerate_command(&tuned, &compare).unwrap();
    assert!(
        command.contains(r"--model='/m/it'\''s.safetensors' --tokens"),
        "{command}"
    );
}

#[test]
fn info_on_a_png_without_settings_or_a_broken_one_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.png");
    image::RgbImage::new(8, 8).save(&plain).unwrap();
    let output = studio(&["info", plain.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("PNG image, 8x8") && text.contains("text:       none"),
        "{text}"
    );
    assert!(!text.contains("regenerate"), "{text}");

    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let output = studio(&["info", broken.to_str().unwrap()], None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a readable PNG"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn generate_writes_pngs_that_carry_their_settings_and_regenerate_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, _) = save_tiny_pair(dir.path());
    let dit_path = dir.path().join("tiny-dit.safetensors");
    let device = cpu();
    let config = textok_studio::model::dit::DitConfig::tiny();
    let mut dit = textok_studio::device::init_module(&device, Some(77), || config.init(&device));
    let seeded = textok_studio::device::seeded(&device, 77);
    // A non-zero output layer, so the images depend on the network and the caption.
    dit.output.weight = burn::module::Param::from_tensor(burn::tensor::Tensor::random(
        [32, 8],
        burn::tensor::Distribution::Normal(0.0, 0.5),
        &device,
    ));
    drop(seeded);
    dit.save(&config, &dit_path, StoredPrecision::F16).unwrap();
    let dit_arg = dit_path.to_str().unwrap();
    // Not Latin-1, so it cannot go in a `tEXt` chunk: the image must still be saved.
    const CAPTION: &str = "a red apple — “café” 🍎 林檎";
    let run = |out: &Path, seed: &str, count: &str| {
        studio(
            &[
                "generate",
                "--caption",
                CAPTION,
                "--tokens",
                "48",
                "--steps",
                "4",
                "--cfg",
                "2.5",
                "--seed",
                seed,
                "--count",
                count,
                "--model",
                &textok,
                "--dit",
                dit_arg,
                "--device",
                "cpu",
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        )
    };
    let first = dir.path().join("first");
    let output = run(&first, "10", "2");
    assert!(output.status.success(), "{}", stderr(&output));
    let a = first.join("gen-10-k48.png");
    let b = first.join("gen-11-k48.png");
    let meta = png_text(&b);
    assert_eq!(meta["caption"], CAPTION);
    assert_eq!(
        (
            meta["seed"].as_str(),
            meta["steps"].as_str(),
            meta["cfg"].as_str(),
            meta["tokens"].as_str()
        ),
        ("11", "4", "2.5", "48")
    );
    assert_eq!(
        meta["dit-sha256"],
        textok_studio::files::sha256_file(&dit_path).unwrap()
    );
    assert_eq!(meta["textok-sha256"].len(), 64);
    assert_eq!(meta["tokenizer"], "textok");
    // `info` shows the settings and the command that makes the image again.
    let info = studio(&["info", b.to_str().unwrap()], None);
    assert!(info.status.success(), "{}", stderr(&info));
    let text = stdout(&info);
    assert!(text.contains("kind:       PNG image, 32x32"), "{text}");
    assert!(text.contains(&format!("caption:    {CAPTION}")), "{text}");
    assert!(!text.contains("saved before images named"), "{text}");
    assert!(
        text.contains(&format!(
            "regenerate: textok-studio generate --caption='{CAPTION}' --model TEXTOK.safetensors \
             --dit DIT.safetensors --tokens 48 --steps 4 --cfg 2.5 --seed 11 --count 1 --out OUT"
        )),
        "{text}"
    );
    // The second image, regenerated alone from its own metadata, is pixel-identical.
    let again = dir.path().join("again");
    assert!(run(&again, &meta["seed"], "1").status.success());
    let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&b), pixels(&again.join("gen-11-k48.png")));
    assert_ne!(pixels(&a), pixels(&b), "different seeds, different images");
    // Generating into the same folder again keeps what is there: the new image gets a free name.
    let before = std::fs::read(&a).unwrap();
    let output = run(&first, "10", "1");
    assert!(output.status.success(), "{}", stderr(&output));
    let second = first.join("gen-10-k48-2.png");
    assert_eq!(stdout(&output).trim(), second.display().to_string());
    assert_eq!(std::fs::read(&a).unwrap(), before);
    assert_eq!(
        pixels(&second),
        pixels(&a),
        "same seed and caption, same image"
    );

    let output = run(&dir.path().join("bad"), "1", "0");
    assert_one_line_error(&output, "count");
}

/// A models folder (for `TEXTOK_MODELS_DIR`) holding only a link to the shipped text encoder:
/// the other shipped files are missing, or what a test writes there.
#[cfg(unix)]
fn models_folder_with_the_text_encoder(dir: &Path) -> std::path::PathBuf {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(
        repo_path("models/text-encoder"),
        models.join("text-encoder"),
    )
    .unwrap();
    models
}

/// `generate` without `--model` decodes with the models folder's generation decoder, not the
/// TexTok file Compare uses; `info` on an image decoded by that TexTok names its file (as
/// `generate` uses it where the generation decoder is missing).
#[cfg(unix)]
#[test]
fn generate_decodes_with_the_shipped_generation_decoder() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_folder_with_the_text_encoder(dir.path());
    // The same encoder (the same tokens), another last detokenizer layer.
    let (textok, config) = tiny(true, 31);
    let mut decoder = textok.clone();
    decoder.to_pixels = tiny(true, 32).0.to_pixels;
    let textok_path = models.join("textok-small.safetensors");
    let decoder_path = models.join("textok-small-generate.safetensors");
    textok
        .save(&config, &textok_path, StoredPrecision::F16)
        .unwrap();
    decoder
        .save(&config, &decoder_path, StoredPrecision::F16)
        .unwrap();
    save_tiny_dit(&models.join("dit-small.safetensors"), 5);
    let sha = |path: &Path| textok_studio::files::sha256_file(path).unwrap();
    let generate = |out: &Path, model: Option<&Path>| {
        let mut args = vec![
            "generate",
            "--caption",
            "a red apple",
            "--tokens",
            "32",
            "--steps",
            "2",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--out",
        ];
        args.push(out.to_str().unwrap());
        if let Some(model) = model {
            args.extend(["--model", model.to_str().unwrap()]);
        }
        let output = studio(&args, Some(&models));
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));
        out.join("gen-3-k32.png")
    };
    let info = |image: &Path| {
        let output = studio(&["info", image.to_str().unwrap()], Some(&models));
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        text.lines()
            .find_map(|line| line.strip_prefix("regenerate: "))
            .unwrap_or_else(|| panic!("{text}"))
            .to_owned()
    };

    let by_default = generate(&dir.path().join("default"), None);
    assert_eq!(png_text(&by_default)["textok-sha256"], sha(&decoder_path));
    let command = info(&by_default);
    assert!(!command.contains("--model"), "{command}");

    let by_textok = generate(&dir.path().join("textok"), Some(&textok_path));
    assert_eq!(png_text(&by_textok)["textok-sha256"], sha(&textok_path));
    let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_ne!(pixels(&by_default), pixels(&by_textok), "two decoders");
    let command = info(&by_textok);
    assert!(
        command.contains(&format!("--model='{}'", textok_path.display())),
        "{command}"
    );

    // A models folder without the generation decoder (one from before it shipped) decodes
    // with its TexTok.
    std::fs::remove_file(&decoder_path).unwrap();
    let fallback = generate(&dir.path().join("fallback"), None);
    assert_eq!(pixels(&fallback), pixels(&by_textok));
    assert!(!info(&fallback).contains("--model"));
}

#[cfg(unix)]
#[test]
fn bench_reports_seconds_per_image_for_each_budget() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_folder_with_the_text_encoder(dir.path());
    let output = studio(
        &[
            "bench",
            "--tokens",
            "32,64",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--device",
            "cpu",
        ],
        Some(&models),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for budget in ["32", "64"] {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(budget))
            .unwrap_or_else(|| panic!("{text}"));
        let seconds: Vec<f64> = row
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(
            seconds.len() == 2 && seconds.iter().all(|s| *s > 0.0),
            "{row}"
        );
    }
}

#[cfg(unix)]
#[test]
fn the_fallback_runtime_folder_is_used_only_when_private_to_this_user() {
    use std::os::unix::fs::PermissionsExt;
    use textok_studio::cli::is_private_dir;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("runtime");
    assert!(is_private_dir(&fresh));
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(is_private_dir(&fresh), "ours again on the next start");
    // Made by someone else first (here: open to all), or a link planted in its place.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!is_private_dir(&open));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&fresh, &link).unwrap();
    assert!(!is_private_dir(&link));
    assert_eq!(
        std::fs::read_dir(&fresh).unwrap().count(),
        0,
        "no probe left"
    );
}

#[test]
fn listing_devices_prints_no_driver_noise_without_a_runtime_dir() {
    let output = Command::new(env!("CARGO_BIN_EXE_textok-studio"))
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("binary runs");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("--device auto picks:"),
        "{}",
        stdout(&output)
    );
    assert!(
        !stderr(&output).contains("XDG_RUNTIME_DIR"),
        "{}",
        stderr(&output)
    );
    // Without a working Vulkan driver the adapter probe fails inside wgpu, which logs an error
    // per driver; the app's own line says what it picked, and stderr (a pipe here) carries no
    // terminal colour codes.
    let output = Command::new(env!("CARGO_BIN_EXE_textok-studio"))
        .arg("devices")
        .env("VK_ICD_FILENAMES", "/no/such/icd.json")
        .env_remove("TEXTOK_LOG")
        .output()
        .expect("binary runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        !err.contains("wgpu_hal") && !err.contains('\u{1b}'),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_training_saves_the_state_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for name in ["apple", "penguin", "lizard", "ambulance"] {
        std::fs::copy(
            repo_path(&format!("assets/samples/{name}.png")),
            data.join(format!("{name}.png")),
        )
        .unwrap();
        std::fs::copy(
            repo_path(&format!("assets/samples/{name}.txt")),
            data.join(format!("{name}.txt")),
        )
        .unwrap();
    }
    let run = dir.path().join("run");
    let args = |steps: &str, resume: bool| {
        let mut args = vec![
            "train",
            "tokenizer",
            "--data",
            data.to_str().unwrap(),
            "--preset",
            "tiny",
            "--steps",
            steps,
            "--batch",
            "2",
            "--device",
            "cpu",
            "--out",
            run.to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if resume {
            args.push("--resume".into());
        }
        args
    };
    let child = Command::new(env!("CARGO_BIN_EXE_textok-studio"))
        .args(args("100000", false))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log gets its first line after step 1.
    let started = std::time::Instant::now();
    while !run.join("log.jsonl").exists() {
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("continue with the same command and --resume"),
        "{}",
        stdout(&output)
    );
    let state =
        textok_studio::checkpoint::CheckpointFile::read(&run.join("state.safetensors")).unwrap();
    let stopped_at: usize = state.metadata()["step"].parse().unwrap();
    assert!((1..100_000).contains(&stopped_at));
    // The saved EMA weights are a usable checkpoint.
    let output = studio(
        &["info", run.join("ema.safetensors").to_str().unwrap()],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_resumed_run_takes_its_own_settings_for_the_flags_not_typed() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_dataset(dir.path(), &["apple", "penguin", "lizard", "ambulance"]);
    let run = dir.path().join("run");
    let train = |steps: &str, extra: &[&str]| {
        let mut args = vec!["train", "tokenizer", "--device", "cpu", "--out"];
        args.push(run.to_str().unwrap());
        if !steps.is_empty() {
            args.extend_from_slice(&["--data", data.to_str().unwrap(), "--steps", steps]);
        }
        args.extend_from_slice(extra);
        studio(&args, None)
    };
    let first = train(
        "2",
        &[
            "--preset", "tiny", "--batch", "2", "--lr", "0.001", "--seed", "5",
        ],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    // A new run needs --data and --steps.
    let missing = train("", &[]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("--data"), "{}", stderr(&missing));
    // With --resume it needs neither: the run's data, schedule, preset, batch, rate and seed
    // are used (a longer --steps would lengthen the schedule).
    let resumed = train("", &["--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (
            &config["preset"],
            &config["batch"],
            &config["learning_rate"],
            &config["seed"],
            &config["steps"]
        ),
        (
            &serde_json::json!("tiny"),
            &serde_json::json!(2),
            &serde_json::json!(0.001),
            &serde_json::json!(5),
            &serde_json::json!(2)
        )
    );
    // A flag typed with another value is still refused, by its flag's name and value.
    let refused = train("4", &["--resume", "--lr", "0.002", "--no-text"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("--lr 0.001 (given: 0.002)"), "{message}");
    assert!(
        message.contains("--no-text false (given: true)"),
        "{message}"
    );
    // A mistyped --out with --resume says there is nothing to resume and makes no folder.
    let elsewhere = dir.path().join("typo");
    let output = studio(
        &[
            "train",
            "tokenizer",
            "--resume",
            "--out",
            elsewhere.to_str().unwrap(),
        ],
        None,
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("nothing to resume"),
        "{}",
        stderr(&output)
    );
    assert!(!elsewhere.exists(), "no folder made for a mistyped run");
    // So does an unknown preset, refused before the device opens.
    let output = studio(
        &[
            "train",
            "tokenizer",
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "2",
            "--preset",
            "huge",
            "--out",
            elsewhere.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        stderr(&output).contains("unknown model preset `huge`"),
        "{}",
        stderr(&output)
    );
    assert!(!elsewhere.exists(), "no folder made for a refused run");
}

#[test]
fn every_training_flag_that_sets_a_config_field_is_listed() {
    use clap::CommandFactory;
    use textok_studio::cli::{Cli, DIT_FLAG_FIELDS, TOKENIZER_FLAG_FIELDS};
    // Flags that change the session, not the run: these need no field.
    const SESSION_FLAGS: [&str; 5] = ["out", "resume", "device", "max_minutes", "help"];
    let command = Cli::command();
    let train = command.find_subcommand("train").unwrap();
    let tokenizer_config = serde_json::to_value(
        textok_studio::train::tokenizer::TokenizerTrainConfig::new("d".into(), "tiny", true, 1, 1),
    )
    .unwrap();
    let dit_config = serde_json::to_value(textok_studio::train::dit::DitTrainConfig::new(
        "d".into(),
        "t".into(),
        "tiny",
        1,
        1,
    ))
    .unwrap();
    for (trainer, table, config) in [
        ("tokenizer", TOKENIZER_FLAG_FIELDS, &tokenizer_config),
        ("dit", DIT_FLAG_FIELDS, &dit_config),
    ] {
        let flags: Vec<String> = train
            .find_subcommand(trainer)
            .unwrap()
            .get_arguments()
            .map(|arg| arg.get_id().as_str().to_owned())
            .collect();
        for flag in &flags {
            assert!(
                SESSION_FLAGS.contains(&flag.as_str())
                    || table.iter().any(|(listed, _)| listed == flag),
                "{trainer}: --{flag} is not in the table, so a resume would override it"
            );
        }
        for (flag, field) in table {
            assert!(flags.iter().any(|f| f == flag), "{trainer}: no flag {flag}");
            assert!(config.get(*field).is_some(), "{trainer}: no field {field}");
        }
    }
}

/// A tiny DiT with a non-zero output layer, so images depend on the network.
fn save_tiny_dit(path: &Path, seed: u64) {
    let device = cpu();
    let config = textok_studio::model::dit::DitConfig::tiny();
    let mut dit = textok_studio::device::init_module(&device, Some(seed), || config.init(&device));
    let seeded = textok_studio::device::seeded(&device, seed);
    dit.output.weight = burn::module::Param::from_tensor(burn::tensor::Tensor::random(
        [32, 8],
        burn::tensor::Distribution::Normal(0.0, 0.5),
        &device,
    ));
    drop(seeded);
    dit.save(&config, path, StoredPrecision::F16).unwrap();
}

#[test]
fn export_f16_keeps_the_model_and_halves_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let device = cpu();
    let (model, config) = tiny(true, 41);
    let full = dir.path().join("full.safetensors");
    model.save(&config, &full, StoredPrecision::F32).unwrap();
    let half = dir.path().join("half.safetensors");
    let output = studio(
        &["export-f16", full.to_str().unwrap(), half.to_str().unwrap()],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let info = stdout(&studio(&["info", half.to_str().unwrap()], None));
    assert!(info.contains("dtype:      F16"), "{info}");
    let sizes = [&full, &half].map(|p| std::fs::metadata(p).unwrap().len() as f64);
    assert!(sizes[1] < 0.6 * sizes[0], "{sizes:?}");
    let (loaded, loaded_config) =
        textok_studio::model::textok::TexTok::load(&half, &device).unwrap();
    assert_eq!(loaded_config, config);
    let images = random_images(1, 3);
    let text = embed(&["a green triangle"]);
    let difference = max_abs_diff(
        model.reconstruct(images.clone(), Some(&text), 64),
        loaded.reconstruct(images, Some(&text), 64),
    );
    assert!(
        difference < 0.02,
        "f16 weights changed the output by {difference}"
    );
    // The tokens agree to f16 precision, and so does the encoder hash: a DiT trained on a run's
    // f32 file serves that file's export without a "trained on other tokens" warning.
    use textok_studio::checkpoint::CheckpointFile;
    use textok_studio::model::textok::TexTok;
    let (full_file, half_file) = (
        CheckpointFile::read(&full).unwrap(),
        CheckpointFile::read(&half).unwrap(),
    );
    let encoder_hash = TexTok::encoder_sha256_of(&full_file).unwrap();
    assert_eq!(encoder_hash, TexTok::encoder_sha256_of(&half_file).unwrap());
    assert!(TexTok::encoder_matches(&half_file, &encoder_hash).unwrap());
    // The exact hash, which DiTs and caches recorded before, still names its own file only.
    let exact = TexTok::exact_encoder_sha256_of(&full_file).unwrap();
    assert_ne!(exact, encoder_hash, "the f32 values are not all f16 values");
    assert!(TexTok::encoder_matches(&full_file, &exact).unwrap());
    assert!(!TexTok::encoder_matches(&half_file, &exact).unwrap());

    let dit = dir.path().join("dit.safetensors");
    save_tiny_dit(&dit, 5);
    let dit_half = dir.path().join("dit-half.safetensors");
    let output = studio(
        &[
            "export-f16",
            dit.to_str().unwrap(),
            dit_half.to_str().unwrap(),
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(textok_studio::model::dit::Dit::load(&dit_half, &device).is_ok());

    let bogus = dir.path().join("bogus.safetensors");
    std::fs::write(&bogus, b"not a checkpoint").unwrap();
    assert_one_line_error(
        &studio(
            &[
                "export-f16",
                bogus.to_str().unwrap(),
                half.to_str().unwrap(),
            ],
            None,
        ),
        "bogus.safetensors",
    );
}

/// A tiny TexTok and Baseline (as [`save_tiny_pair`]) and a tiny DiT, `dir/dit.safetensors`.
fn save_tiny_generator(dir: &Path) -> (String, String, std::path::PathBuf) {
    let (textok, baseline) = save_tiny_pair(dir);
    let dit = dir.join("dit.safetensors");
    save_tiny_dit(&dit, 3);
    (textok, baseline, dit)
}

/// A generator from saved tiny models (`baseline`: decode with a no-text tokenizer).
fn tiny_engine(
    tokenizer: &str,
    dit: &Path,
    baseline: bool,
) -> textok_studio::pipeline::GenerateEngine {
    let mut spec = textok_studio::pipeline::GenerateSpec::shipped();
    spec.baseline = baseline;
    spec.textok = Some(tokenizer.into());
    spec.dit = Some(dit.to_owned());
    textok_studio::pipeline::GenerateEngine::load(&spec, textok_studio::device::cpu()).unwrap()
}

#[test]
fn generated_images_name_the_models_as_they_were_loaded() {
    // A DiT named while its training run still rewrites the file: the images carry the hash
    // of the weights that made them, not of whatever the file holds when they are saved.
    let dir = tempfile::tempdir().unwrap();
    let (textok, _, dit) = save_tiny_generator(dir.path());
    let loaded_hash = textok_studio::files::sha256_file(&dit).unwrap();
    let engine = tiny_engine(&textok, &dit, false);
    save_tiny_dit(&dit, 9);
    assert_ne!(
        textok_studio::files::sha256_file(&dit).unwrap(),
        loaded_hash
    );
    let models = textok_studio::pipeline::GeneratorIdentity::of(&engine);
    assert_eq!(models.dit_id, loaded_hash);
    assert_eq!(models.tokenizer, textok_studio::pipeline::Tokenizer::TexTok);
    std::fs::remove_file(Path::new(&textok)).unwrap();
    assert_eq!(
        textok_studio::pipeline::GeneratorIdentity::of(&engine)
            .tokenizer_id
            .len(),
        64,
        "a deleted file is still named by the hash it had"
    );
}

#[test]
fn engine_loads_name_each_model_as_it_starts_and_stop_between_models_once_cancelled() {
    use std::sync::Mutex;
    use textok_studio::jobs::{CancelToken, Cancelled, Progress};
    use textok_studio::pipeline::{EngineSpec, GenerateEngine, GenerateSpec, ReconstructEngine};
    let dir = tempfile::tempdir().unwrap();
    let (textok, baseline, dit) = save_tiny_generator(dir.path());
    let mut generate_spec = GenerateSpec::shipped();
    generate_spec.textok = Some(textok.clone().into());
    generate_spec.dit = Some(dit.clone());
    let mut reconstruct_spec = EngineSpec::shipped();
    reconstruct_spec.textok = Some(textok.into());
    reconstruct_spec.baseline = Some(baseline.into());

    // Records every report; cancels the load when one names `cancel_at`.
    let recorder = |cancel_at: &'static str| {
        let reports = Arc::new(Mutex::new(Vec::<Progress>::new()));
        let cancel = CancelToken::new();
        let (seen, stop) = (reports.clone(), cancel.clone());
        let sink = move |progress: Progress| {
            if progress.message == cancel_at {
                stop.cancel();
            }
            seen.lock().unwrap().push(progress);
        };
        (reports, cancel, sink)
    };
    let steps = |reports: &Arc<Mutex<Vec<Progress>>>| {
        let reports = reports.lock().unwrap();
        reports
            .iter()
            .map(|p| format!("{} of {}: {}", p.done + 1, p.total, p.message))
            .collect::<Vec<_>>()
    };

    let (reports, cancel, sink) = recorder("never");
    GenerateEngine::load_reporting(&generate_spec, textok_studio::device::cpu(), &sink, &cancel)
        .unwrap();
    assert_eq!(
        steps(&reports),
        [
            "1 of 3: TexTok",
            "2 of 3: the DiT",
            "3 of 3: the text encoder"
        ]
    );
    let (reports, cancel, sink) = recorder("never");
    ReconstructEngine::load_reporting(
        &reconstruct_spec,
        textok_studio::device::cpu(),
        &sink,
        &cancel,
    )
    .unwrap();
    assert_eq!(
        steps(&reports),
        [
            "1 of 3: TexTok",
            "2 of 3: the Baseline",
            "3 of 3: the text encoder"
        ]
    );

    // Cancelled while the DiT loads: the text encoder is never started, and the error says
    // "cancelled" (which the job runner shows as stopped, not failed).
    let (reports, cancel, sink) = recorder("the DiT");
    let error = GenerateEngine::load_reporting(
        &generate_spec,
        textok_studio::device::cpu(),
        &sink,
        &cancel,
    )
    .err()
    .expect("a cancelled load");
    assert!(
        error.chain().any(|cause| cause.is::<Cancelled>()),
        "{error:#}"
    );
    assert_eq!(steps(&reports), ["1 of 3: TexTok", "2 of 3: the DiT"]);
    let (reports, cancel, sink) = recorder("TexTok");
    assert!(
        ReconstructEngine::load_reporting(
            &reconstruct_spec,
            textok_studio::device::cpu(),
            &sink,
            &cancel
        )
        .is_err()
    );
    assert_eq!(steps(&reports), ["1 of 3: TexTok"]);
}

#[test]
fn a_batch_of_captions_generates_what_each_caption_generates_alone() {
    use textok_studio::model::dit::SampleSettings;
    use textok_studio::pipeline::{generate, generate_for_captions};
    let dir = tempfile::tempdir().unwrap();
    let (textok, baseline, dit) = save_tiny_generator(dir.path());
    for (is_baseline, tokenizer) in [(false, &textok), (true, &baseline)] {
        let engine = tiny_engine(tokenizer, &dit, is_baseline);
        assert_eq!(engine.textok.model.is_text_conditioned(), !is_baseline);
        let settings = SampleSettings {
            tokens: 40,
            steps: 3,
            cfg: 2.0,
            seed: 11,
            count: 1,
            guidance_interval: None,
        };
        let captions = [
            "a red apple",
            "an emperor penguin standing on the ice at night",
        ];
        let cancel = textok_studio::jobs::CancelToken::new();
        let together = generate_for_captions(
            &engine,
            &captions,
            &settings,
            &textok_studio::jobs::NoProgress,
            &cancel,
        )
        .unwrap();
        assert_eq!(together.len(), 2);
        for (i, caption) in captions.iter().enumerate() {
            let alone = generate(
                &engine,
                caption,
                &SampleSettings {
                    seed: 11 + i as u64,
                    ..settings.clone()
                },
                &textok_studio::jobs::NoProgress,
                &cancel,
            )
            .unwrap()
            .remove(0)
            .image;
            // Padding the shorter caption changes only float summation order.
            let worst = together[i]
                .iter()
                .zip(alone.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-3,
                "image {i} (baseline: {is_baseline}) differs by {worst}"
            );
        }
        assert_ne!(together[0], together[1]);
    }
}

#[test]
fn generation_fd_scores_every_image_but_keeps_only_the_ones_asked_for() {
    use textok_studio::jobs::{CancelToken, NoProgress};
    use textok_studio::metrics::evaluation::{effnet_features, generation_fd};
    let dir = tempfile::tempdir().unwrap();
    let (textok, _, dit) = save_tiny_generator(dir.path());
    let engine = tiny_engine(&textok, &dit, false);
    let device = engine.device.device.clone();
    let effnet = textok_studio::model::effnet::EfficientNet::load(
        &textok_studio::paths::effnet_checkpoint(),
        &device,
    )
    .unwrap();
    let references: Vec<_> = (0..3u8)
        .map(|i| image::Rgb32FImage::from_pixel(32, 32, image::Rgb([0.3 * f32::from(i), 0.5, 0.2])))
        .collect();
    let reference_features = effnet_features(&effnet, &references, &device).unwrap();
    let captions: Vec<String> = (0..18).map(|i| format!("picture number {i}")).collect();
    let settings = textok_studio::model::dit::SampleSettings {
        tokens: 32,
        steps: 2,
        cfg: 2.0,
        seed: 5,
        count: 1,
        guidance_interval: None,
    };
    let set = generation_fd(
        &engine,
        &captions,
        &reference_features,
        &effnet,
        &settings,
        3,
        &NoProgress,
        &CancelToken::new(),
    )
    .unwrap();
    // 18 captions are two batches: every image is scored, only the first 3 are held.
    assert_eq!(set.features.len(), 18);
    assert_eq!(set.images.len(), 3);
    assert!(set.fd_effnet.is_finite());
    // The kept images are the first ones, and their features are theirs.
    assert_eq!(
        effnet_features(&effnet, &set.images, &device).unwrap(),
        set.features[..3].to_vec()
    );
}

#[test]
fn caption_contrast_scores_the_same_noise_with_each_caption() {
    use textok_studio::jobs::NoProgress;
    use textok_studio::metrics::evaluation::caption_contrast;
    let dir = tempfile::tempdir().unwrap();
    let (textok, _, dit) = save_tiny_generator(dir.path());
    let engine = tiny_engine(&textok, &dit, false);
    let images: Vec<_> = ["apple", "penguin", "lizard"]
        .iter()
        .map(|name| {
            let path = repo_path(&format!("assets/samples/{name}.png"));
            image::open(path)
                .unwrap()
                .resize_exact(32, 32, image::imageops::FilterType::Triangle)
                .to_rgb32f()
        })
        .collect();
    let cancel = textok_studio::jobs::CancelToken::new();
    // One caption for every image: the nearest other caption is the same text, so it must
    // score exactly as the own caption (same tokens, same noise); the null caption differs.
    let same = vec!["a red apple".to_owned(); 3];
    let contrast = caption_contrast(&engine, &images, &same, 40, 7, &NoProgress, &cancel).unwrap();
    assert_eq!(contrast.own, contrast.nearest);
    assert_ne!(contrast.own, contrast.null);
    assert_eq!(contrast.timesteps, [500, 700, 900]);
    let different: Vec<String> = ["a red apple", "a penguin on ice", "a green lizard"]
        .map(String::from)
        .to_vec();
    let contrast =
        caption_contrast(&engine, &images, &different, 40, 7, &NoProgress, &cancel).unwrap();
    assert_ne!(contrast.own, contrast.nearest);
    let again =
        caption_contrast(&engine, &images, &different, 40, 7, &NoProgress, &cancel).unwrap();
    assert_eq!(contrast, again, "a seed gives the same numbers");
    // Budgets the DiT cannot make and mismatched inputs are errors, not panics.
    assert!(caption_contrast(&engine, &images, &different, 300, 7, &NoProgress, &cancel).is_err());
    assert!(
        caption_contrast(
            &engine,
            &images[..1],
            &different[..1],
            40,
            7,
            &NoProgress,
            &cancel
        )
        .is_err()
    );
}

#[test]
fn gen_eval_contrast_only_measures_without_generating() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, _, dit) = save_tiny_generator(dir.path());
    let data = sample_dataset(dir.path(), &["apple", "penguin", "lizard"]);
    let json = dir.path().join("contrast.json");
    let output = studio(
        &[
            "gen-eval",
            "--data",
            data.to_str().unwrap(),
            "--validation-percent",
            "99",
            "--images",
            "3",
            "--tokens",
            "40",
            "--model",
            &textok,
            "--dit",
            dit.to_str().unwrap(),
            "--contrast-only",
            "--device",
            "cpu",
            "--json",
            json.to_str().unwrap(),
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("specificity"));
    assert!(!stdout(&output).contains("FD-EffNet"), "nothing generated");
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["model"], "textok");
    assert_eq!(
        rows[0]["caption_contrast"]["own"].as_array().unwrap().len(),
        3
    );
}

#[test]
fn gen_eval_reports_fd_effnet_for_both_generators() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, baseline) = save_tiny_pair(dir.path());
    let (dit, baseline_dit) = (
        dir.path().join("dit.safetensors"),
        dir.path().join("dit-baseline.safetensors"),
    );
    save_tiny_dit(&dit, 3);
    save_tiny_dit(&baseline_dit, 4);
    let data = sample_dataset(
        dir.path(),
        &["apple", "penguin", "lizard", "ambulance", "bread-and-wine"],
    );
    let json = dir.path().join("gen.json");
    let sheet = dir.path().join("gen.png");
    let gen_eval = |baseline_dit: &Path, outputs: &[&str]| {
        let mut args = vec![
            "gen-eval",
            "--data",
            data.to_str().unwrap(),
            // Every image is a reference: the tiny set has no other validation split.
            "--validation-percent",
            "99",
            "--images",
            "6",
            "--tokens",
            "32",
            "--steps",
            "2",
            "--model",
            &textok,
            "--dit",
            dit.to_str().unwrap(),
            "--baseline",
            &baseline,
            "--baseline-dit",
            baseline_dit.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(outputs);
        studio(&args, None)
    };
    // A guidance interval is checked before anything loads, and recorded.
    let output = gen_eval(&baseline_dit, &["--guidance-interval", "700:100"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("LO <= HI"), "{}", stderr(&output));
    let output = gen_eval(
        &baseline_dit,
        &[
            "--json",
            json.to_str().unwrap(),
            "--sheet",
            sheet.to_str().unwrap(),
            "--guidance-interval",
            "100:900",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let models: Vec<&str> = records
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["textok", "baseline"]);
    for record in &records {
        assert_eq!(record["images"], 6);
        assert_eq!(record["guidance_interval"], serde_json::json!([100, 900]));
        let fd = record["fd_effnet"].as_f64().unwrap();
        assert!(fd.is_finite() && fd > 0.0, "{record}");
        let matched = record["caption_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&matched), "{record}");
        // Per image: the validation file and caption it was given, and its rank, from which
        // the rate follows.
        let per_image = record["per_image"].as_array().unwrap();
        assert_eq!(per_image.len(), 6, "{record}");
        let under_k = per_image
            .iter()
            .filter(|image| image["rank"].as_u64().unwrap() < 5)
            .count();
        assert_eq!(under_k as f64 / 6.0, matched, "{record}");
        for image in per_image {
            let file = image["file"].as_str().unwrap();
            assert!(data.join(file).is_file(), "{image}");
            assert!(!image["caption"].as_str().unwrap().is_empty(), "{image}");
        }
        let contrast = &record["caption_contrast"];
        assert_eq!(contrast["timesteps"], serde_json::json!([500, 700, 900]));
        for key in ["own", "nearest", "null"] {
            let losses = contrast[key].as_array().unwrap();
            assert_eq!(losses.len(), 3, "{record}");
            assert!(losses.iter().all(|v| v.as_f64().unwrap() > 0.0), "{record}");
        }
    }
    assert!(stdout(&output).contains("specificity"));
    assert!(stdout(&output).contains("FD-EffNet") && stdout(&output).contains("caption match"));
    assert!(stdout(&output).contains("guidance only at timesteps 100..=900"));
    let sheet = image::open(&sheet).unwrap();
    assert_eq!(
        sheet.height(),
        3 * (32 + 4) + 4,
        "the validation images, then a row per generator"
    );
    // A Baseline DiT that cannot be read is found before the TexTok generator runs, not after.
    let missing = dir.path().join("no-such-dit.safetensors");
    let output = gen_eval(&missing, &[]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("baseline generator") && err.contains("no-such-dit"),
        "{err}"
    );
    assert!(
        !err.contains("caption contrast") && !err.contains("1/6"),
        "{err}"
    );
}

#[test]
fn a_one_budget_dit_generates_its_budget_and_refuses_the_others() {
    use textok_studio::model::dit::{Dit, DitConfig};
    use textok_studio::model::textok::{TexTok, TexTokConfig};
    let dir = tempfile::tempdir().unwrap();
    let (textok, _) = save_tiny_pair(dir.path());
    let device = cpu();
    let mut config = DitConfig::tiny();
    config.trained_min_budget = Some(48);
    config.trained_max_budget = Some(48);
    let dit: Dit = textok_studio::device::init_module(&device, Some(5), || config.init(&device));
    let dit_path = dir.path().join("one-budget.safetensors");
    dit.save(&config, &dit_path, StoredPrecision::F16).unwrap();
    let run_with = |model: &str, tokens: &str| {
        let stem = Path::new(model).file_stem().unwrap().to_string_lossy();
        studio(
            &[
                "generate",
                "--caption",
                "a red apple",
                "--tokens",
                tokens,
                "--steps",
                "2",
                "--seed",
                "1",
                "--count",
                "1",
                "--model",
                model,
                "--dit",
                dit_path.to_str().unwrap(),
                "--device",
                "cpu",
                "--out",
                dir.path()
                    .join(format!("out-{stem}-{tokens}"))
                    .to_str()
                    .unwrap(),
            ],
            None,
        )
    };
    let run = |tokens: &str| run_with(&textok, tokens);
    let output = run("48");
    assert!(output.status.success(), "{}", stderr(&output));
    // Refused once the DiT is loaded (its file says what it was trained on), with one error line.
    let output = run("40");
    assert!(!output.status.success());
    let errors: Vec<String> = stderr(&output)
        .lines()
        .filter(|line| line.starts_with("error"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{}", stderr(&output));
    assert!(errors[0].contains("trained to generate 48..=48 tokens, not 40"));
    // With a TexTok that holds fewer tokens than the DiT makes, loading is refused (the GUI's
    // budget slider would otherwise get an empty range).
    let short = dir.path().join("short-textok.safetensors");
    let mut short_config = TexTokConfig::tiny(true);
    short_config.max_tokens = 40;
    let model: TexTok =
        textok_studio::device::init_module(&device, Some(6), || short_config.init(&device));
    model
        .save(&short_config, &short, StoredPrecision::F16)
        .unwrap();
    let output = run_with(short.to_str().unwrap(), "48");
    assert!(!output.status.success());
    let error = stderr(&output);
    assert_eq!(
        error.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{error}"
    );
    assert!(error.contains("trained on 48..=48 tokens"), "{error}");
    assert!(
        stderr(&output).contains("at most 40 tokens"),
        "{}",
        stderr(&output)
    );
    // A checkpoint from before the field existed generates every budget.
    let mut json: serde_json::Value = serde_json::to_value(&config).unwrap();
    let object = json.as_object_mut().unwrap();
    object.remove("trained_min_budget");
    object.remove("trained_max_budget");
    let old: DitConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.trained_budgets(), 32..=old.max_tokens);
}

#[test]
fn generate_decodes_with_the_baseline_when_asked_and_needs_its_dit() {
    let dir = tempfile::tempdir().unwrap();
    let (textok, baseline) = save_tiny_pair(dir.path());
    let dit = dir.path().join("dit.safetensors");
    save_tiny_dit(&dit, 4);
    let run = |model: &str, dit: Option<&Path>, out: &str| {
        let out = dir.path().join(out);
        let mut args = vec![
            "generate",
            "--baseline",
            "--caption",
            "a red apple",
            "--tokens",
            "40",
            "--steps",
            "2",
            "--seed",
            "3",
            "--count",
            "1",
            "--model",
            model,
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(dit) = dit {
            args.extend(["--dit", dit.to_str().unwrap()]);
        }
        studio(&args, None)
    };
    let output = run(&baseline, Some(&dit), "baseline");
    assert!(output.status.success(), "{}", stderr(&output));
    let meta = png_text(&dir.path().join("baseline/gen-3-k40.png"));
    assert_eq!(meta["tokenizer"], "baseline");
    assert_eq!(
        meta["baseline-sha256"],
        textok_studio::files::sha256_file(Path::new(&baseline)).unwrap(),
        "decoded by the Baseline"
    );
    assert!(!meta.contains_key("textok-sha256"));
    // `info` says how to make it again: with the Baseline, which needs both files named.
    let info = studio(
        &[
            "info",
            dir.path().join("baseline/gen-3-k40.png").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        stdout(&info).contains(
            "generate --caption='a red apple' --baseline --model BASELINE.safetensors \
             --dit DIT.safetensors --tokens 40"
        ),
        "{}",
        stdout(&info)
    );
    assert_one_line_error(&run(&baseline, None, "no-dit"), "--baseline needs --dit");
    // A TexTok checkpoint is not a Baseline.
    let output = run(&textok, Some(&dit), "wrong-kind");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("Baseline"), "{}", stderr(&output));
}

#[test]
fn eval_with_token_noise_scores_perturbed_tokens_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_dataset(dir.path(), &["apple", "penguin", "lizard"]);
    let psnr_at = |noise: &str, name: &str| {
        let json = dir.path().join(format!("{name}.json"));
        let output = studio(
            &[
                "eval",
                "--data",
                data.to_str().unwrap(),
                "--tokens",
                "64",
                "--split",
                "all",
                "--token-noise",
                noise,
                "--device",
                "cpu",
                "--json",
                json.to_str().unwrap(),
            ],
            None,
        );
        assert!(output.status.success(), "{}", stderr(&output));
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        records
            .iter()
            .map(|r| r["psnr"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    // The shipped models (TexTok and Baseline) lose quality when their tokens are perturbed,
    // and the perturbation is seeded: the same noise gives the same scores.
    let clean = psnr_at("0", "clean");
    let noisy = psnr_at("0.5", "noisy");
    assert_eq!(noisy, psnr_at("0.5", "again"));
    for (c, n) in clean.iter().zip(&noisy) {
        assert!(n < c, "noise should cost PSNR: {c} -> {n}");
    }
    assert_one_line_error(
        &studio(
            &["eval", "--data", data.to_str().unwrap(), "--token-noise=-1"],
            None,
        ),
        "--token-noise",
    );
}

#[test]
fn budgets_beyond_a_checkpoints_tokens_are_refused_not_a_crash() {
    // A valid checkpoint may hold fewer than 256 tokens; asking for more must be a user error.
    let dir = tempfile::tempdir().unwrap();
    let device = cpu();
    let mut paths = Vec::new();
    for text in [true, false] {
        let mut config = textok_studio::model::textok::TexTokConfig::tiny(text);
        config.max_tokens = 64;
        let model = config.init(&device);
        let path = dir.path().join(format!("tiny64-{text}.safetensors"));
        model.save(&config, &path, StoredPrecision::F16).unwrap();
        paths.push(path.to_string_lossy().into_owned());
    }
    let data = sample_dataset(dir.path(), &["apple", "penguin"]);
    let data = data.to_str().unwrap();
    let output = studio(
        &[
            "eval",
            "--data",
            data,
            "--model",
            &paths[0],
            "--baseline",
            &paths[1],
            "--tokens",
            "32,128",
            "--split",
            "all",
            "--device",
            "cpu",
        ],
        None,
    );
    // After the loading lines, the error and no panic.
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim_end().lines().last(),
        Some("error: token budget 128 is outside 32..=64"),
        "{err}"
    );

    // Training from it samples budgets up to its 64 tokens, and validates at 32 and 64 only.
    let run = dir.path().join("run");
    let output = studio(
        &[
            "train",
            "tokenizer",
            "--data",
            data,
            "--init-from",
            &paths[0],
            "--steps",
            "2",
            "--batch",
            "1",
            "--eval-every",
            "2",
            "--eval-images",
            "1",
            "--device",
            "cpu",
            "--out",
            run.to_str().unwrap(),
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let eval: serde_json::Value = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|event| event["event"] == "eval")
        .unwrap_or_else(|| panic!("no eval event in {log}"));
    let budgets: Vec<u64> = eval["psnr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_u64().unwrap())
        .collect();
    assert_eq!(budgets, [32, 64], "{eval}");
}

#[test]
fn training_a_tokenizer_from_a_dit_file_says_what_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let dit = dir.path().join("dit.safetensors");
    save_tiny_dit(&dit, 1);
    let data = sample_dataset(dir.path(), &["apple"]);
    let run = dir.path().join("run");
    let output = studio(
        &[
            "train",
            "tokenizer",
            "--data",
            data.to_str().unwrap(),
            "--init-from",
            dit.to_str().unwrap(),
            "--steps",
            "1",
            "--device",
            "cpu",
            "--out",
            run.to_str().unwrap(),
        ],
        None,
    );
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("dit.safetensors: holds a `textok-dit` model"),
        "{err}"
    );
}

#[test]
fn a_generator_paired_with_a_tokenizer_of_other_tokens_says_so() {
    use textok_studio::model::textok::TexTok;
    use textok_studio::pipeline::{GenerateEngine, GenerateSpec};
    let dir = tempfile::tempdir().unwrap();
    let device = cpu();
    // Two tokenizers with different encoders, and a copy of the first with another decoder.
    let (textok, baseline) = save_tiny_pair(dir.path());
    let (model, config) = tiny(true, 57);
    let other = dir.path().join("other.safetensors");
    model.save(&config, &other, StoredPrecision::F16).unwrap();
    let (mut same_tokens, config) = TexTok::load(Path::new(&textok), &device).unwrap();
    same_tokens.to_pixels.bias = same_tokens
        .to_pixels
        .bias
        .map(|bias| bias.map(|b| b.add_scalar(0.5)));
    let same_tokens_file = dir.path().join("new-decoder.safetensors");
    same_tokens
        .save(&config, &same_tokens_file, StoredPrecision::F16)
        .unwrap();

    // A DiT that records the tokenizer it was trained on.
    let dit_config = textok_studio::model::dit::DitConfig::tiny()
        .with_tokenizer_encoder_sha256(Some(TexTok::encoder_sha256(Path::new(&textok)).unwrap()));
    let dit = textok_studio::device::init_module(&device, Some(5), || dit_config.init(&device));
    let recorded = dir.path().join("recorded-dit.safetensors");
    dit.save(&dit_config, &recorded, StoredPrecision::F16)
        .unwrap();
    // Two from before DiTs recorded it: one stands for the shipped DiT.
    let unrecorded = dir.path().join("unrecorded-dit.safetensors");
    save_tiny_dit(&unrecorded, 5);
    let shipped_dit = dir.path().join("shipped-dit.safetensors");
    save_tiny_dit(&shipped_dit, 5);

    let load = |tokenizer: &Path, dit: Option<&Path>, default_textok: &str, baseline: bool| {
        let mut spec = GenerateSpec::shipped();
        spec.baseline = baseline;
        spec.textok = Some(tokenizer.to_owned());
        spec.default_textok = default_textok.into();
        spec.default_dit = shipped_dit.clone();
        spec.dit = dit.map(Path::to_owned);
        GenerateEngine::load(&spec, textok_studio::device::cpu()).unwrap()
    };
    let mismatch = |tokenizer: &Path, dit: Option<&Path>, default_textok: &str| {
        load(tokenizer, dit, default_textok, false).token_mismatch
    };
    let textok_path = Path::new(&textok);
    assert_eq!(mismatch(textok_path, Some(&recorded), &textok), None);
    assert_eq!(mismatch(&same_tokens_file, Some(&recorded), &textok), None);
    let warning = mismatch(&other, Some(&recorded), &textok).expect("other tokens");
    assert!(warning.contains("other.safetensors"), "{warning}");
    // An unrecorded DiT chosen by hand: not known, no warning ...
    assert_eq!(mismatch(&other, Some(&unrecorded), &textok), None);
    // ... the shipped (default) one was trained on the shipped (default) tokenizer.
    assert_eq!(mismatch(&same_tokens_file, None, &textok), None);
    assert!(mismatch(&other, None, &textok).is_some());
    // The shipped DiT named by its path is still the shipped DiT ...
    assert!(mismatch(&other, Some(&shipped_dit), &textok).is_some());
    assert_eq!(
        mismatch(&same_tokens_file, Some(&shipped_dit), &textok),
        None
    );
    // ... and decoding its tokens with the Baseline is as wrong as with any other tokenizer
    // (`generate --baseline` makes the Baseline the default tokenizer, as here).
    let baseline_path = Path::new(&baseline);
    for dit in [None, Some(shipped_dit.as_path())] {
        assert!(
            load(baseline_path, dit, &baseline, true)
                .token_mismatch
                .is_some()
        );
    }
}

#[test]
fn a_closed_stdout_negative_numbers_and_app_options_with_a_command_are_plain_errors() {
    // `textok-studio info FILE | head -1`: the rest of the output is dropped, no panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_textok-studio"))
        .args(["info", "models/dit-small.safetensors"])
        .stdout(writer)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    // A negative number reaches the range check instead of reading as an unknown flag.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = studio(
        &[
            "generate",
            "--caption",
            "red apple",
            "--cfg",
            "-1",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("guidance scale (--cfg) must be between 0 and 50, got -1"),
        "{}",
        stderr(&output)
    );
    // The desktop app's options are refused with a command, not ignored.
    let output = studio(&["--pane", "compare", "devices"], None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot be used with"),
        "{}",
        stderr(&output)
    );
}
