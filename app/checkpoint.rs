//! Self-describing safetensors checkpoints.
//!
//! A checkpoint stores every parameter of a module under its module path (`encoder.blocks.0...`)
//! as f16 or f32, plus two metadata entries: `textok_studio_kind` (which model this is) and
//! `config` (the model's config as JSON), so a file alone is enough to rebuild the model.
//! Loading validates every tensor before any of it reaches the model, and every failure names
//! the file and the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::store::burn_pack::{Bytes, DType, Tensor as PackTensor};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Metadata key naming the model kind (see the `KIND_*` constants of each model).
pub const KIND_KEY: &str = "textok_studio_kind";
/// Metadata key holding the model config as JSON.
pub const CONFIG_KEY: &str = "config";

/// Precision of the stored parameters. Models always compute in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPrecision {
    F16,
    F32,
}

/// I/O failures keep their error in a field named `cause`, not `source`: the message already shows
/// it, and a `source` would be printed a second time by `{:#}` (the CLI's and the GUI's format).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: cannot read checkpoint: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: cannot write checkpoint: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file ({reason})")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path}: no `{key}` metadata; this file was not written by TexTok Studio")]
    MissingMetadata { path: PathBuf, key: &'static str },
    #[error("{path}: holds a `{found}` model, but a `{expected}` model is needed here")]
    WrongKind {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}: its `config` metadata is not a valid {expected} config: {reason}")]
    BadConfig {
        path: PathBuf,
        expected: String,
        reason: String,
    },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` is not part of this model (config and weights disagree)")]
    UnexpectedTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, the config expects {expected:?}")]
    WrongShape {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` is stored as {found}; only F16, BF16 and F32 are supported")]
    WrongDtype {
        path: PathBuf,
        tensor: String,
        found: String,
    },
    #[error("{path}: tensor `{tensor}` contains NaN or infinite values")]
    NonFinite { path: PathBuf, tensor: String },
    #[error("{path}: the tensors could not be applied to the model: {reason}")]
    Apply { path: PathBuf, reason: String },
}

/// A checkpoint file read into memory and checked to be well-formed safetensors.
pub struct CheckpointFile {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

/// One stored tensor's description, for `info`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Checks that `found`, the kind a file's metadata names (`None`: it names none), is `expected`.
fn check_kind(path: &Path, found: Option<&str>, expected: &str) -> Result<(), CheckpointError> {
    match found {
        None => Err(CheckpointError::MissingMetadata {
            path: path.to_owned(),
            key: KIND_KEY,
        }),
        Some(found) if found != expected => Err(CheckpointError::WrongKind {
            path: path.to_owned(),
            found: found.to_owned(),
            expected: expected.to_owned(),
        }),
        Some(_) => Ok(()),
    }
}

/// The largest safetensors header read (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

impl CheckpointFile {
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let not_safetensors = |reason: String| CheckpointError::NotSafetensors {
            path: path.to_owned(),
            reason,
        };
        // The header first: a file we did not write (say, a multi-GB Stable Diffusion
        // checkpoint picked by mistake) is refused before its tensors are read into memory.
        if !Self::read_metadata(path)?.contains_key(KIND_KEY) {
            return Err(CheckpointError::MissingMetadata {
                path: path.to_owned(),
                key: KIND_KEY,
            });
        }
        let bytes = std::fs::read(path).map_err(|cause| CheckpointError::Read {
            path: path.to_owned(),
            cause,
        })?;
        // `deserialize` checks the header, every offset and the total length, so a truncated
        // or foreign file fails here instead of later inside a tensor.
        SafeTensors::deserialize(&bytes).map_err(|e| not_safetensors(e.to_string()))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(Self {
            path: path.to_owned(),
            bytes,
            metadata,
        })
    }

    /// [`Self::read`] of a file that must hold a model of `expected` kind: the kind is checked
    /// from the header first, so a wrong file (a 1 GB DiT picked as a tokenizer, a training
    /// state) is refused before its tensors are read into memory.
    pub fn read_kind(path: &Path, expected: &str) -> Result<Self, CheckpointError> {
        Self::read_metadata_of_kind(path, expected)?;
        Self::read(path)
    }

    /// [`Self::read_metadata`] of a file that must hold a model of `expected` kind.
    pub fn read_metadata_of_kind(
        path: &Path,
        expected: &str,
    ) -> Result<HashMap<String, String>, CheckpointError> {
        let metadata = Self::read_metadata(path)?;
        check_kind(path, metadata.get(KIND_KEY).map(String::as_str), expected)?;
        Ok(metadata)
    }

    /// The metadata of a safetensors file, read from its header alone (no tensor is read).
    pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, CheckpointError> {
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(rename = "__metadata__", default)]
            metadata: HashMap<String, String>,
        }
        let (header, _) = Self::read_header(path)?;
        serde_json::from_slice::<Header>(&header)
            .map(|header| header.metadata)
            .map_err(|_| CheckpointError::NotSafetensors {
                path: path.to_owned(),
                reason: "the header is not safetensors JSON".to_owned(),
            })
    }

    /// Checks from the header alone that the file holds every byte its tensors need: a copy
    /// cut short is refused before anything else is loaded (a resume's data, say).
    pub fn check_length(path: &Path) -> Result<(), CheckpointError> {
        let (header, data_bytes) = Self::read_header(path)?;
        let entries: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|_| CheckpointError::NotSafetensors {
                path: path.to_owned(),
                reason: "the header is not safetensors JSON".to_owned(),
            })?;
        let needed = entries
            .iter()
            .filter(|(name, _)| *name != "__metadata__")
            .filter_map(|(_, entry)| entry.get("data_offsets")?.get(1)?.as_u64())
            .max()
            .unwrap_or(0);
        if needed > data_bytes {
            return Err(CheckpointError::NotSafetensors {
                path: path.to_owned(),
                reason: format!(
                    "the file is cut short: its tensors need {needed} bytes, it holds {data_bytes}"
                ),
            });
        }
        Ok(())
    }

    /// A safetensors file's JSON header and the number of bytes after it.
    fn read_header(path: &Path) -> Result<(Vec<u8>, u64), CheckpointError> {
        use std::io::Read;
        let read_error = |cause| CheckpointError::Read {
            path: path.to_owned(),
            cause,
        };
        let not_safetensors = |reason: &str| CheckpointError::NotSafetensors {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let metadata = file.metadata().map_err(read_error)?;
        if metadata.is_dir() {
            return Err(read_error(std::io::Error::other("a folder, not a file")));
        }
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                not_safetensors("shorter than a safetensors header")
            }
            _ => read_error(e),
        })?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER_BYTES || header_len + 8 > metadata.len() {
            return Err(not_safetensors(
                "the header length is past the end of the file",
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(read_error)?;
        Ok((header, metadata.len() - 8 - header_len))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub fn kind(&self) -> Result<&str, CheckpointError> {
        self.metadata
            .get(KIND_KEY)
            .map(String::as_str)
            .ok_or(CheckpointError::MissingMetadata {
                path: self.path.clone(),
                key: KIND_KEY,
            })
    }

    /// Checks that this file holds a model of `expected` kind.
    pub fn expect_kind(&self, expected: &str) -> Result<(), CheckpointError> {
        check_kind(&self.path, Some(self.kind()?), expected)
    }

    /// The raw config JSON stored in the metadata.
    pub fn config_json(&self) -> Result<&str, CheckpointError> {
        self.metadata
            .get(CONFIG_KEY)
            .map(String::as_str)
            .ok_or(CheckpointError::MissingMetadata {
                path: self.path.clone(),
                key: CONFIG_KEY,
            })
    }

    /// The config stored in the metadata, parsed as `C`.
    pub fn config<C: DeserializeOwned>(&self, expected: &str) -> Result<C, CheckpointError> {
        serde_json::from_str(self.config_json()?).map_err(|e| CheckpointError::BadConfig {
            path: self.path.clone(),
            expected: expected.to_owned(),
            reason: e.to_string(),
        })
    }

    /// [`Self::config`], then `validate` on it (a config from an untrusted file must describe a
    /// sane model before one is built); its complaint becomes a `BadConfig` naming the file.
    pub fn validated_config<C: DeserializeOwned>(
        &self,
        expected: &str,
        validate: impl FnOnce(&C) -> Result<(), String>,
    ) -> Result<C, CheckpointError> {
        let config = self.config(expected)?;
        validate(&config).map_err(|reason| CheckpointError::BadConfig {
            path: self.path.clone(),
            expected: expected.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    fn tensors(&self) -> SafeTensors<'_> {
        // Cannot fail: `read` deserialized the same bytes successfully.
        SafeTensors::deserialize(&self.bytes).expect("validated in CheckpointFile::read")
    }

    /// Name, dtype and shape of every stored tensor, sorted by name.
    pub fn stored_tensors(&self) -> Vec<StoredTensor> {
        let mut list: Vec<StoredTensor> = self
            .tensors()
            .iter()
            .map(|(name, view)| StoredTensor {
                name: name.to_owned(),
                dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// SHA-256 of the whole file (what [`crate::files::sha256_file`] gives for it).
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        crate::files::to_hex(&Sha256::digest(&self.bytes))
    }

    /// SHA-256 over this file's kind and config and the stored tensors whose names `include`
    /// selects (each one's name, shape and values, in name order). Two files that agree on
    /// these compute the same function with those tensors, whatever else in them differs: a
    /// tokenizer whose detokenizer alone was fine-tuned still makes the same tokens, and a
    /// cache of them stays valid. Float values are hashed as f32, first rounded to f16 when
    /// `precision` says so, and the config as parsed JSON: with [`HashPrecision::F16`] a run's
    /// f32 `ema.safetensors` and its `export-f16` file agree. The config's `ignored_keys` are
    /// left out (settings of the part not hashed).
    pub fn selected_tensors_sha256(
        &self,
        include: impl Fn(&str) -> bool,
        precision: HashPrecision,
        ignored_keys: &[&str],
    ) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut update = |part: &[u8]| {
            // Length-prefixed, so no two different sequences of parts hash alike.
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        };
        update(
            self.metadata
                .get(KIND_KEY)
                .map_or(&b""[..], |kind| kind.as_bytes()),
        );
        let config = self.metadata.get(CONFIG_KEY).map(|json| {
            // Key order and spacing do not change the config (serde_json's maps sort keys).
            serde_json::from_str::<serde_json::Value>(json).map_or_else(
                |_| json.clone(),
                |mut value| {
                    if let serde_json::Value::Object(fields) = &mut value {
                        for key in ignored_keys {
                            fields.remove(*key);
                        }
                    }
                    value.to_string()
                },
            )
        });
        update(config.as_deref().unwrap_or("").as_bytes());
        let tensors = self.tensors();
        let mut selected: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .filter(|(name, _)| include(name))
            .map(|(name, view)| (name.to_owned(), view))
            .collect();
        selected.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in selected {
            update(name.as_bytes());
            update(format!("{:?}", view.shape()).as_bytes());
            match decode_f32(&view) {
                Some(values) => {
                    let round = |v: f32| match precision {
                        HashPrecision::F32 => v,
                        HashPrecision::F16 => half::f16::from_f32(v).to_f32(),
                    };
                    let bytes: Vec<u8> = values
                        .iter()
                        .flat_map(|&v| round(v).to_le_bytes())
                        .collect();
                    update(&bytes);
                }
                None => {
                    update(format!("{:?}", view.dtype()).as_bytes());
                    update(view.data());
                }
            }
        }
        crate::files::to_hex(&hasher.finalize())
    }

    /// Total number of stored scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, v)| v.shape().iter().product::<usize>())
            .sum()
    }

    /// Refuses a config that needs more weights than this file stores (`needed`: the
    /// config's `weight_parameters`), from the header alone, before the model is built: a
    /// config within its limits can still describe a model of hundreds of GB, and building it
    /// first would fail by running out of memory instead of with this error.
    pub fn expect_parameters_for_config(
        &self,
        needed: usize,
        expected: &str,
    ) -> Result<(), CheckpointError> {
        let stored = self.parameter_count();
        if stored >= needed {
            return Ok(());
        }
        Err(CheckpointError::BadConfig {
            path: self.path.clone(),
            expected: expected.to_owned(),
            reason: format!(
                "it describes a model of at least {needed} parameters, but the file stores \
                 {stored} (config and weights disagree)"
            ),
        })
    }

    /// Validates every stored tensor against `module`'s parameters (names, shapes, dtype,
    /// finiteness) and only then loads them into it.
    pub fn load_into<M: Module + ModuleSnapshot>(&self, module: M) -> Result<M, CheckpointError> {
        let expected = expected_parameters(&module);
        let tensors = self.validated_tensors(&expected, "", &[])?;
        host_to_module(module, tensors).map_err(|reason| CheckpointError::Apply {
            path: self.path.clone(),
            reason,
        })
    }

    /// The stored tensors named `prefix` + each expected name, checked against the expected
    /// shapes, decoded to f32 and checked finite. Stored names under `prefix` that are not
    /// expected are errors; names in `ignore` are skipped. Parameter ids are restored from the
    /// `param_ids` metadata when present (training state), so optimizer state stays attached.
    pub fn validated_tensors(
        &self,
        expected: &BTreeMap<String, Vec<usize>>,
        prefix: &str,
        ignore: &[&str],
    ) -> Result<Vec<HostTensor>, CheckpointError> {
        let path = || self.path.clone();
        let stored = self.tensors();
        let mut stored_names: Vec<&str> = stored.names();
        stored_names.sort();
        for name in stored_names {
            if ignore.contains(&name) {
                continue;
            }
            let unexpected = match name.strip_prefix(prefix) {
                Some(rest) => !expected.contains_key(rest),
                None => prefix.is_empty(),
            };
            if unexpected {
                return Err(CheckpointError::UnexpectedTensor {
                    path: path(),
                    tensor: name.to_owned(),
                });
            }
        }
        let param_ids: HashMap<String, u64> = self
            .metadata
            .get(PARAM_IDS_KEY)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        let mut loaded = Vec::with_capacity(expected.len());
        for (name, shape) in expected {
            let full = format!("{prefix}{name}");
            let view = stored
                .tensor(&full)
                .map_err(|_| CheckpointError::MissingTensor {
                    path: path(),
                    tensor: full.clone(),
                })?;
            if view.shape() != shape.as_slice() {
                return Err(CheckpointError::WrongShape {
                    path: path(),
                    tensor: full,
                    found: view.shape().to_vec(),
                    expected: shape.clone(),
                });
            }
            let values = decode_f32(&view).ok_or_else(|| CheckpointError::WrongDtype {
                path: path(),
                tensor: full.clone(),
                found: format!("{:?}", view.dtype()),
            })?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(CheckpointError::NonFinite {
                    path: path(),
                    tensor: full,
                });
            }
            let param_id = param_ids.get(&full).copied();
            loaded.push(HostTensor {
                name: name.clone(),
                shape: shape.clone(),
                param_id,
                values,
            });
        }
        Ok(loaded)
    }

    /// Raw bytes of a stored U8 tensor (used for optimizer state blobs).
    pub fn blob(&self, name: &str) -> Option<Vec<u8>> {
        let tensors = self.tensors();
        let view = tensors.tensor(name).ok()?;
        (view.dtype() == Dtype::U8).then(|| view.data().to_vec())
    }
}

/// Metadata key mapping stored tensor names to burn parameter ids (training state only).
pub const PARAM_IDS_KEY: &str = "param_ids";

/// Parameter names and shapes of a module.
pub fn expected_parameters<M: Module + ModuleSnapshot>(module: &M) -> BTreeMap<String, Vec<usize>> {
    module
        .collect(None, None, true)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect()
}

/// Little-endian F16/BF16/F32 data as f32; `None` for any other dtype.
fn decode_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            data.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// The precision at which [`CheckpointFile::selected_tensors_sha256`] hashes float values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashPrecision {
    /// The values as stored (read as f32).
    F32,
    /// Rounded to f16 first, the precision checkpoints are shipped in.
    F16,
}

/// A parameter copied to host memory as f32, with its module path and burn parameter id.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub param_id: Option<u64>,
    pub values: Vec<f32>,
}

/// Copies every parameter of `module` to host memory (in module order).
pub fn module_to_host<M: Module + ModuleSnapshot>(module: &M) -> Result<Vec<HostTensor>, String> {
    module
        .collect(None, None, true)
        .into_iter()
        .map(|tensor| {
            if tensor.dtype != DType::F32 {
                return Err(format!(
                    "{}: parameters of dtype {:?} are not supported",
                    tensor.name, tensor.dtype
                ));
            }
            let bytes = tensor
                .to_bytes()
                .map_err(|e| format!("{}: {e:?}", tensor.name))?;
            let values = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(HostTensor {
                name: tensor.name.clone(),
                shape: tensor.shape.to_vec(),
                param_id: tensor.param_id,
                values,
            })
        })
        .collect()
}

/// Loads host tensors into `module` by name (restoring parameter ids when present). The caller
/// has validated names and shapes; any tensor burn refuses is reported by name.
pub fn host_to_module<M: Module + ModuleSnapshot>(
    mut module: M,
    tensors: Vec<HostTensor>,
) -> Result<M, String> {
    let packed = tensors
        .into_iter()
        .map(|t| {
            PackTensor::new(
                t.name,
                DType::F32,
                t.shape,
                t.param_id,
                Bytes::from_elems(t.values),
            )
        })
        .collect();
    let result = module.apply(packed, None, None, true);
    if let Some(error) = result.errors.first() {
        return Err(format!("{error:?}"));
    }
    if let Some((tensor, _)) = result.missing.first() {
        return Err(format!("tensor `{tensor}` is missing"));
    }
    Ok(module)
}

/// Saves every parameter of `module` to `path` (atomically), with `kind` and `config` metadata.
pub fn save_module<M: Module + ModuleSnapshot, C: Serialize>(
    module: &M,
    path: &Path,
    kind: &str,
    config: &C,
    precision: StoredPrecision,
) -> Result<(), CheckpointError> {
    let tensors = module_to_host(module).map_err(|e| CheckpointError::Write {
        path: path.to_owned(),
        cause: std::io::Error::other(e),
    })?;
    save_host_tensors(&tensors, path, kind, config, precision, HashMap::new())
}

/// Writes host tensors as a self-describing checkpoint (atomically). `extra` metadata is added
/// to the kind and config entries.
pub fn save_host_tensors<C: Serialize>(
    tensors: &[HostTensor],
    path: &Path,
    kind: &str,
    config: &C,
    precision: StoredPrecision,
    extra: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes =
        serialize_host_tensors(tensors, kind, config, precision, extra, &[]).map_err(|e| {
            CheckpointError::Write {
                path: path.to_owned(),
                cause: std::io::Error::other(e),
            }
        })?;
    crate::files::write_atomic(path, &bytes).map_err(|cause| CheckpointError::Write {
        path: path.to_owned(),
        cause,
    })
}

/// Serializes host tensors (plus raw byte blobs stored as U8 tensors) to safetensors bytes.
pub fn serialize_host_tensors<C: Serialize>(
    tensors: &[HostTensor],
    kind: &str,
    config: &C,
    precision: StoredPrecision,
    extra: HashMap<String, String>,
    blobs: &[(&str, &[u8])],
) -> Result<Vec<u8>, String> {
    let mut metadata = extra;
    metadata.insert(KIND_KEY.to_owned(), kind.to_owned());
    metadata.insert(
        CONFIG_KEY.to_owned(),
        serde_json::to_string(config).map_err(|e| e.to_string())?,
    );
    if precision == StoredPrecision::F16 {
        // A value past f16's range would be stored as infinity: a file that writes fine but
        // that no load accepts. Refuse it here, naming the tensor.
        let largest = f32::from(half::f16::MAX);
        for tensor in tensors {
            if let Some(value) = tensor.values.iter().find(|v| v.abs() > largest) {
                return Err(format!(
                    "tensor {} holds {value}, beyond f16's range (±{largest}); keep this \
                     checkpoint in f32",
                    tensor.name
                ));
            }
        }
    }
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let bytes = match precision {
                StoredPrecision::F32 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                StoredPrecision::F16 => t
                    .values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            (t.name.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let dtype = match precision {
        StoredPrecision::F16 => Dtype::F16,
        StoredPrecision::F32 => Dtype::F32,
    };
    let mut views = Vec::with_capacity(encoded.len() + blobs.len());
    for (name, shape, bytes) in &encoded {
        views.push((
            name.clone(),
            TensorView::new(dtype, shape.clone(), bytes).map_err(|e| e.to_string())?,
        ));
    }
    for (name, bytes) in blobs {
        views.push((
            (*name).to_owned(),
            TensorView::new(Dtype::U8, vec![bytes.len()], bytes).map_err(|e| e.to_string())?,
        ));
    }
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}
