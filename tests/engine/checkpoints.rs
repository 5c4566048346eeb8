use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use textok_studio::checkpoint::{CheckpointError, StoredPrecision};
use textok_studio::model::dit::DitConfig;
use textok_studio::model::textok::{TexTok, TexTokConfig};

use crate::common::*;
use crate::memory::peak_bytes;

struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_all(path: &Path) -> (Vec<Stored>, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let stored = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| Stored {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    (stored, metadata)
}

fn write_all(path: &Path, stored: &[Stored], metadata: HashMap<String, String>) {
    let views: Vec<(String, TensorView)> = stored
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                TensorView::new(s.dtype, s.shape.clone(), &s.data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

/// Saves a tiny TexTok (f32), lets `edit` damage the file, and returns the load error.
fn load_error_after(
    edit: impl FnOnce(&mut Vec<Stored>, &mut HashMap<String, String>),
) -> (CheckpointError, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (model, config) = tiny(true, 11);
    model.save(&config, &path, StoredPrecision::F32).unwrap();
    let (mut stored, mut metadata) = read_all(&path);
    edit(&mut stored, &mut metadata);
    write_all(&path, &stored, metadata);
    let err = TexTok::load(&path, &cpu()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("model.safetensors"),
        "error names the file: {message}"
    );
    (err, message)
}

#[test]
fn f32_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let (model, config) = tiny(true, 12);
    model.save(&config, &path, StoredPrecision::F32).unwrap();
    let (loaded, loaded_config) = TexTok::load(&path, &cpu()).unwrap();
    assert_eq!(loaded_config, config);
    let before = model.collect(None, None, true);
    let after = loaded.collect(None, None, true);
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a.name, b.name);
        assert_eq!(
            a.to_bytes().unwrap().to_vec(),
            b.to_bytes().unwrap().to_vec(),
            "{}",
            a.name
        );
    }
    let images = random_images(1, 13);
    let text = embed(&["a boat"]);
    let diff = max_abs_diff(
        model.reconstruct(images.clone(), Some(&text), 40),
        loaded.reconstruct(images, Some(&text), 40),
    );
    assert_eq!(diff, 0.0);
}

#[test]
fn f16_round_trip_keeps_f16_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny16.safetensors");
    let (model, config) = tiny(false, 14);
    model.save(&config, &path, StoredPrecision::F16).unwrap();
    let (stored, _) = read_all(&path);
    assert!(stored.iter().all(|s| s.dtype == Dtype::F16));
    let (loaded, _) = TexTok::load(&path, &cpu()).unwrap();
    for (a, b) in model
        .collect(None, None, true)
        .iter()
        .zip(&loaded.collect(None, None, true))
    {
        let to_f32 = |bytes: &[u8]| {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        };
        let original = to_f32(&a.to_bytes().unwrap());
        let reloaded = to_f32(&b.to_bytes().unwrap());
        for (x, y) in original.iter().zip(&reloaded) {
            assert_eq!(half::f16::from_f32(*x).to_f32(), *y, "{}", a.name);
        }
    }
}

#[test]
fn missing_tensor_is_named() {
    let (err, message) =
        load_error_after(|stored, _| stored.retain(|s| s.name != "to_tokens.weight"));
    assert!(
        matches!(err, CheckpointError::MissingTensor { .. }),
        "{message}"
    );
    assert!(message.contains("to_tokens.weight"), "{message}");
}

#[test]
fn extra_tensor_is_named() {
    let (err, message) = load_error_after(|stored, _| {
        stored.push(Stored {
            name: "surprise.weight".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: vec![0; 8],
        })
    });
    assert!(
        matches!(err, CheckpointError::UnexpectedTensor { .. }),
        "{message}"
    );
    assert!(message.contains("surprise.weight"), "{message}");
}

#[test]
fn misshapen_tensor_is_named() {
    let (err, message) = load_error_after(|stored, _| {
        let t = stored
            .iter_mut()
            .find(|s| s.name == "patch_embed.bias")
            .unwrap();
        t.shape = vec![t.shape[0] / 2, 2];
    });
    assert!(
        matches!(err, CheckpointError::WrongShape { .. }),
        "{message}"
    );
    assert!(message.contains("patch_embed.bias"), "{message}");
}

#[test]
fn wrong_dtype_is_named() {
    let (err, message) = load_error_after(|stored, _| {
        let t = stored
            .iter_mut()
            .find(|s| s.name == "encoder_norm.gamma")
            .unwrap();
        t.dtype = Dtype::I32;
    });
    assert!(
        matches!(err, CheckpointError::WrongDtype { .. }),
        "{message}"
    );
    assert!(
        message.contains("encoder_norm.gamma") && message.contains("I32"),
        "{message}"
    );
}

#[test]
fn non_finite_values_are_refused() {
    let (err, message) = load_error_after(|stored, _| {
        let t = stored
            .iter_mut()
            .find(|s| s.name == "to_pixels.bias")
            .unwrap();
        t.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(
        matches!(err, CheckpointError::NonFinite { .. }),
        "{message}"
    );
}

#[test]
fn config_that_disagrees_with_the_weights_is_refused() {
    let (err, message) = load_error_after(|_, metadata| {
        let mut config: serde_json::Value = serde_json::from_str(&metadata["config"]).unwrap();
        // Narrower than the stored weights (a wider config is refused earlier, below).
        config["width"] = 16.into();
        config["mlp_hidden"] = 32.into();
        metadata.insert("config".into(), config.to_string());
    });
    assert!(
        matches!(err, CheckpointError::WrongShape { .. }),
        "{message}"
    );
}

#[test]
fn a_config_larger_than_its_weights_is_refused_before_the_model_is_built() {
    // 201 M parameters (805 MB of f32) in a file holding the tiny model's 0.03 M: within the
    // config limits, so without the check the model is allocated and filled first and only
    // its first tensor's shape then disagrees.
    let ((err, message), peak) = peak_bytes(|| {
        load_error_after(|_, metadata| {
            let mut config: serde_json::Value = serde_json::from_str(&metadata["config"]).unwrap();
            config["width"] = 1024.into();
            config["heads"] = 8.into();
            config["mlp_hidden"] = 4096.into();
            config["encoder_layers"] = 8.into();
            config["decoder_layers"] = 8.into();
            metadata.insert("config".into(), config.to_string());
        })
    });
    assert!(
        matches!(err, CheckpointError::BadConfig { .. }),
        "{message}"
    );
    assert!(message.contains("config and weights disagree"), "{message}");
    assert!(
        peak < 64 << 20,
        "refused after allocating {} MiB",
        peak >> 20
    );
}

#[test]
fn weight_parameter_counts_track_the_models() {
    // The load check above relies on `weight_parameters` never exceeding what a model really
    // has; counting only matrices and embeddings, it should also be most of it.
    let within = |counted: usize, actual: usize, what: &str| {
        assert!(
            counted <= actual && counted * 100 >= actual * 95,
            "{what}: counted {counted}, the model has {actual}"
        );
    };
    for text in [true, false] {
        for config in [
            TexTokConfig::tiny(text),
            TexTokConfig::small(text),
            TexTokConfig::small(text).with_refine_channels(Some(32)),
        ] {
            let actual = config.init(&cpu()).num_params();
            within(config.weight_parameters(), actual, &format!("{config:?}"));
        }
    }
    for config in [
        DitConfig::tiny(),
        DitConfig::small(),
        DitConfig::small().with_pooled_caption(Some(true)),
    ] {
        let actual = config.init(&cpu()).num_params();
        within(config.weight_parameters(), actual, &format!("{config:?}"));
    }
    let minilm = textok_studio::model::text_encoder::MiniLmConfig::all_minilm_l6_v2();
    let actual = minilm.init(&cpu()).num_params();
    within(minilm.weight_parameters(), actual, "MiniLM");
}

#[test]
fn configs_whose_forward_pass_needs_gigabytes_are_refused() {
    // Each is a small file (few weights) that would need many GB to run: refused by
    // `validate`, which every load calls before building the model.
    let refused = |config: TexTokConfig, what: &str| {
        let reason = config.validate().expect_err(what);
        assert!(reason.contains(what), "{reason}");
    };
    let small = TexTokConfig::small(true);
    // 1024 px in patches of 4: 65,536 patches, a 137 GB attention matrix per head.
    refused(
        TexTokConfig {
            image_size: 1024,
            patch_size: 4,
            ..small.clone()
        },
        "at most 4096",
    );
    // Heads of 4 channels (width 32 in 8 heads).
    refused(
        TexTokConfig {
            width: 32,
            heads: 8,
            mlp_hidden: 64,
            ..small.clone()
        },
        "8 channels wide",
    );
    // A 256-channel refinement head at 512 px: 64 M activations per image.
    refused(
        TexTokConfig {
            image_size: 512,
            refine_channels: Some(256),
            ..small.clone()
        },
        "refine_channels x image_size^2",
    );
    assert!(small.with_refine_channels(Some(256)).validate().is_ok());
    // A DiT's time features past any real model (their count would overflow the weight count).
    let dit = DitConfig {
        time_features: 1 << 62,
        ..DitConfig::tiny()
    };
    assert!(dit.validate().unwrap_err().contains("time_features"));
    let dit = DitConfig {
        heads: 8,
        ..DitConfig::tiny()
    };
    assert!(dit.validate().unwrap_err().contains("8 channels wide"));
}

#[test]
fn invalid_config_is_an_error_not_a_panic() {
    let (err, message) = load_error_after(|_, metadata| {
        let mut config: serde_json::Value = serde_json::from_str(&metadata["config"]).unwrap();
        config["patch_size"] = 0.into();
        metadata.insert("config".into(), config.to_string());
    });
    assert!(
        matches!(err, CheckpointError::BadConfig { .. }),
        "{message}"
    );
    let (err, _) = load_error_after(|_, metadata| {
        metadata.insert("config".into(), "{not json".into());
    });
    assert!(matches!(err, CheckpointError::BadConfig { .. }));
}

#[test]
fn missing_metadata_and_wrong_kind_are_refused() {
    let (err, message) = load_error_after(|_, metadata| {
        metadata.remove("textok_studio_kind");
    });
    assert!(
        matches!(err, CheckpointError::MissingMetadata { .. }),
        "{message}"
    );
    let err =
        TexTok::load(&repo_path("models/text-encoder/model.safetensors"), &cpu()).unwrap_err();
    assert!(matches!(err, CheckpointError::WrongKind { .. }), "{err}");
}

#[test]
fn a_foreign_file_is_refused_from_its_header_before_its_tensors_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd-model.safetensors");
    // A safetensors header without our metadata that announces 32 GiB of tensor data, of which
    // the file holds none: refused from the header alone, the answer is "not ours"; reading
    // the file first would have found it truncated instead (or run out of memory, had it
    // held the data).
    let header = br#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[17179869184],"data_offsets":[0,34359738368]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&path, &bytes).unwrap();
    let err = TexTok::load(&path, &cpu()).unwrap_err();
    assert!(
        matches!(err, CheckpointError::MissingMetadata { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("not written by TexTok Studio"),
        "{err}"
    );
    // One of ours of another kind (a DiT, announcing 32 GiB it does not hold) is refused as
    // the wrong kind, from the header too, by every loader.
    let header = br#"{"__metadata__":{"textok_studio_kind":"textok-dit"},"w":{"dtype":"F16","shape":[17179869184],"data_offsets":[0,34359738368]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&path, &bytes).unwrap();
    let wrong_kind = |err: CheckpointError| {
        assert!(matches!(err, CheckpointError::WrongKind { .. }), "{err}");
    };
    wrong_kind(TexTok::load(&path, &cpu()).unwrap_err());
    wrong_kind(TexTok::encoder_sha256(&path).unwrap_err());
    wrong_kind(
        textok_studio::model::effnet::EfficientNet::load(&path, &cpu())
            .err()
            .unwrap(),
    );
    let err = textok_studio::checkpoint::CheckpointFile::read_kind(&path, "textok-dit")
        .err()
        .unwrap();
    assert!(
        matches!(err, CheckpointError::NotSafetensors { .. }),
        "the right kind is read whole, and found short: {err}"
    );
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (model, config) = tiny(true, 15);
    model.save(&config, &path, StoredPrecision::F16).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 20, 7, 0] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = TexTok::load(&path, &cpu()).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NotSafetensors { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("model.safetensors"));
    }
    std::fs::write(&path, b"this is a text file, not a checkpoint\n".repeat(10)).unwrap();
    assert!(matches!(
        TexTok::load(&path, &cpu()),
        Err(CheckpointError::NotSafetensors { .. })
    ));
    let missing = dir.path().join("nope.safetensors");
    let err = TexTok::load(&missing, &cpu()).unwrap_err();
    assert!(
        matches!(err, CheckpointError::Read { .. }) && err.to_string().contains("nope.safetensors")
    );
    let err = TexTok::load(dir.path(), &cpu()).unwrap_err();
    assert!(
        matches!(err, CheckpointError::Read { .. }) && err.to_string().contains("a folder"),
        "{err}"
    );
}

#[test]
fn saving_is_atomic_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");
    let (model, config) = tiny(true, 16);
    model.save(&config, &path, StoredPrecision::F16).unwrap();
    model.save(&config, &path, StoredPrecision::F16).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.safetensors")]);
    // Saving into a folder that does not exist fails cleanly and names the path.
    let err = model
        .save(
            &config,
            &dir.path().join("no/such/dir/x.safetensors"),
            StoredPrecision::F16,
        )
        .unwrap_err();
    assert!(err.to_string().contains("x.safetensors"), "{err}");
}

#[test]
fn a_missing_file_names_the_path_and_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.safetensors");
    let err = TexTok::load(&path, &cpu()).unwrap_err();
    assert!(matches!(err, CheckpointError::Read { .. }), "{err}");
    // The CLI and the GUI print errors as anyhow's `{:#}`, which appends every `source()`:
    // the OS's reason must appear once, not repeated after the message that already holds it.
    let printed = format!("{:#}", anyhow::Error::new(err));
    assert!(printed.contains("gone.safetensors"), "{printed}");
    let os_reason = std::fs::read(&path).unwrap_err().to_string();
    assert_eq!(printed.matches(&os_reason).count(), 1, "{printed}");
}

#[test]
fn a_text_encoder_with_a_bad_config_or_a_foreign_tokenizer_is_refused() {
    use textok_studio::model::text_encoder::MiniLmTextEncoder;
    let shipped = repo_path("models/text-encoder");
    let copy_of_shipped = || {
        let dir = tempfile::tempdir().unwrap();
        for name in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(shipped.join(name), dir.path().join(name)).unwrap();
        }
        dir
    };
    let load_error = |dir: &Path| {
        MiniLmTextEncoder::load(dir, 32, &cpu())
            .expect_err("refused")
            .to_string()
    };
    // Heads that do not divide the width, or none: refused with the reason, not a panic in
    // the attention layer's constructor.
    for heads in [7, 0] {
        let dir = copy_of_shipped();
        let path = dir.path().join("model.safetensors");
        let (stored, mut metadata) = read_all(&path);
        let mut config: serde_json::Value = serde_json::from_str(&metadata["config"]).unwrap();
        config["num_heads"] = heads.into();
        metadata.insert("config".into(), config.to_string());
        write_all(&path, &stored, metadata);
        let message = load_error(dir.path());
        assert!(
            message.contains("num_heads") && message.contains("model.safetensors"),
            "{message}"
        );
    }
    // A tokenizer whose ids run past the embedding table: refused at load, not on the first
    // caption that uses the id.
    let dir = copy_of_shipped();
    let path = dir.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    tokenizer["model"]["vocab"]["zzqq"] = 99_999.into();
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains("99999") && message.contains("tokenizer.json"),
        "{message}"
    );
    // A smaller vocabulary (another model's tokenizer): every id fits, yet every caption would
    // be other words; refused by the count.
    let dir = copy_of_shipped();
    let path = dir.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    let last_words: Vec<String> = vocab
        .iter()
        .filter(|(_, id)| id.as_u64().unwrap() >= 29_000)
        .map(|(word, _)| word.clone())
        .collect();
    for word in last_words {
        vocab.remove(&word);
    }
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains("29000 tokens") && message.contains("30522"),
        "{message}"
    );
    // The untouched copy loads.
    MiniLmTextEncoder::load(copy_of_shipped().path(), 32, &cpu()).unwrap();
}

#[test]
fn an_f16_save_refuses_values_beyond_f16s_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let (model, config) = tiny(true, 13);
    model.save(&config, &path, StoredPrecision::F32).unwrap();
    let (mut stored, metadata) = read_all(&path);
    let bias = stored
        .iter_mut()
        .find(|s| s.name == "to_pixels.bias")
        .unwrap();
    bias.data[0..4].copy_from_slice(&1e6f32.to_le_bytes());
    write_all(&path, &stored, metadata);
    // Fine in f32 ...
    let (big, config) = TexTok::load(&path, &cpu()).unwrap();
    // ... but f16 would store infinity, which no load accepts: refused, nothing written.
    let half = dir.path().join("half.safetensors");
    let message = big
        .save(&config, &half, StoredPrecision::F16)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("to_pixels.bias") && message.contains("f16"),
        "{message}"
    );
    assert!(!half.exists());
}
