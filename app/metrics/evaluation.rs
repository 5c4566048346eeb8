//! The paper's Table 1 for our data: PSNR, SSIM and FD-EffNet of TexTok and the Baseline at each
//! token budget, on a dataset split.

use serde::{Deserialize, Serialize};

use crate::data::dataset::DatasetItem;
use crate::data::image as imageio;
use crate::jobs::{CancelToken, Progress, ProgressSink};
use crate::model::effnet::EfficientNet;
use crate::model::text_encoder::TextEncoder;
use crate::model::textok::TexTok;

/// One row of the table; also the `--json` record format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// "textok" or "baseline".
    pub model: String,
    pub tokens: usize,
    pub psnr: f64,
    pub ssim: f64,
    pub fd_effnet: f64,
    pub images: usize,
    /// Share of reconstructions whose original is among the [`CAPTION_MATCH_K`] originals
    /// nearest to them in EfficientNet features: the ceiling for a generator's
    /// [`GenerationRecord::caption_match`] with this tokenizer. (Absent in older records.)
    #[serde(default)]
    pub match_rate: Option<f64>,
}

/// A model to evaluate under a name ("textok" / "baseline").
pub struct NamedModel<'a> {
    pub name: &'a str,
    pub model: &'a TexTok,
}

/// The frozen networks and the device an evaluation uses.
pub struct EvalSetup<'a> {
    pub text_encoder: &'a dyn TextEncoder,
    pub effnet: &'a EfficientNet,
    pub device: &'a burn::tensor::Device,
    /// Robustness: decode tokens perturbed by this much of their per-channel spread
    /// ([`crate::model::textok::token_noise`], seeded per batch); 0 = the plain tokens.
    pub token_noise: f32,
}

/// Reconstructs every item at every budget with every model and scores it.
pub fn evaluate_models(
    models: &[NamedModel<'_>],
    items: &[&DatasetItem],
    budgets: &[usize],
    setup: &EvalSetup<'_>,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> anyhow::Result<Vec<EvalRecord>> {
    let EvalSetup {
        text_encoder,
        effnet,
        device,
        token_noise,
    } = *setup;
    const BATCH: usize = 16;
    anyhow::ensure!(
        items.len() >= 2,
        "FD-EffNet needs at least 2 images, got {}",
        items.len()
    );
    for named in models {
        crate::pipeline::validate_budgets(budgets, named.model.max_tokens)
            .map_err(|error| anyhow::anyhow!("{}: {error}", named.name))?;
    }
    let total = items.len().div_ceil(BATCH) * (1 + models.len());
    let mut done = 0;
    let mut step = |message: &str| {
        done += 1;
        progress.report(Progress {
            done,
            total,
            message: message.to_owned(),
        });
    };
    let originals: Vec<_> = items.iter().map(|item| item.image()).collect();
    let mut original_features = Vec::with_capacity(items.len());
    for chunk in originals.chunks(BATCH) {
        cancel.check()?;
        let refs: Vec<_> = chunk.iter().collect();
        original_features.extend(features_of(effnet, imageio::to_tensor(&refs, device))?);
        step("features of the originals");
    }
    let mut records = Vec::new();
    for named in models {
        // Per budget: sums of PSNR/SSIM and the reconstructions' features.
        let mut psnr = vec![0.0; budgets.len()];
        let mut ssim = vec![0.0; budgets.len()];
        let mut features: Vec<Vec<Vec<f32>>> = vec![Vec::new(); budgets.len()];
        for (chunk_index, chunk) in originals.chunks(BATCH).enumerate() {
            cancel.check()?;
            let chunk_items = &items[chunk_index * BATCH..chunk_index * BATCH + chunk.len()];
            let refs: Vec<_> = chunk.iter().collect();
            let input = imageio::to_tensor(&refs, device);
            let captions: Vec<&str> = chunk_items
                .iter()
                .map(|item| item.caption.as_str())
                .collect();
            let text = if named.model.is_text_conditioned() {
                Some(text_encoder.encode(&captions)?)
            } else {
                None
            };
            let mut tokens = named.model.encode(input, text.as_ref());
            if token_noise > 0.0 {
                let sigmas = vec![token_noise; chunk.len()];
                tokens = tokens.clone()
                    + crate::model::textok::token_noise(&tokens, &sigmas, chunk_index as u64);
            }
            for (b, &budget) in budgets.iter().enumerate() {
                let decoded = named
                    .model
                    .decode(tokens.clone().narrow(1, 0, budget), text.as_ref());
                let images = imageio::from_tensor(decoded.clone());
                for (original, reconstruction) in chunk.iter().zip(&images) {
                    // Identical images have infinite PSNR; cap so one perfect image cannot
                    // dominate the mean.
                    psnr[b] += crate::metrics::psnr(original, reconstruction).min(100.0);
                    ssim[b] += crate::metrics::ssim(original, reconstruction);
                }
                features[b].extend(features_of(effnet, decoded.clamp(-1.0, 1.0))?);
            }
            step(&format!("{} reconstructions", named.name));
        }
        let n = items.len() as f64;
        for (b, &budget) in budgets.iter().enumerate() {
            records.push(EvalRecord {
                model: named.name.to_owned(),
                tokens: budget,
                psnr: psnr[b] / n,
                ssim: ssim[b] / n,
                fd_effnet: crate::metrics::fd::frechet_distance(&original_features, &features[b]),
                images: items.len(),
                match_rate: Some(caption_match_rate(
                    &features[b],
                    &original_features,
                    &(0..items.len()).collect::<Vec<_>>(),
                    &caption_groups(&items.iter().map(|item| &item.caption).collect::<Vec<_>>()),
                    CAPTION_MATCH_K,
                )),
            });
        }
    }
    Ok(records)
}

/// A tensor's values on the host as f32, row-major.
fn host<const D: usize>(tensor: &burn::tensor::Tensor<D>, what: &str) -> anyhow::Result<Vec<f32>> {
    tensor
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{what}: {e:?}"))
}

fn features_of(
    effnet: &EfficientNet,
    images: burn::tensor::Tensor<4>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let pooled = effnet.pooled(images);
    let [batch, dim] = pooled.dims();
    let values = host(&pooled, "EfficientNet features")?;
    Ok((0..batch)
        .map(|i| values[i * dim..(i + 1) * dim].to_vec())
        .collect())
}

/// The table as text: rows budget x model, then TexTok's relative improvement per budget.
pub fn format_table(records: &[EvalRecord]) -> String {
    let mut out = format!(
        "{:<9} {:>6} {:>9} {:>7} {:>10} {:>12}\n",
        "model",
        "tokens",
        "PSNR dB",
        "SSIM",
        "FD-EffNet",
        format!("match top-{CAPTION_MATCH_K}")
    );
    let mut budgets: Vec<usize> = records.iter().map(|r| r.tokens).collect();
    budgets.sort_unstable();
    budgets.dedup();
    for &budget in &budgets {
        for record in records.iter().filter(|r| r.tokens == budget) {
            let label = if record.model == "textok" {
                "TexTok"
            } else if record.model == "baseline" {
                "Baseline"
            } else {
                &record.model
            };
            let matched = record
                .match_rate
                .map_or("-".to_owned(), |rate| format!("{:.1} %", 100.0 * rate));
            out.push_str(&format!(
                "{:<9} {:>6} {:>9.2} {:>7.4} {:>10.2} {:>12}\n",
                label, record.tokens, record.psnr, record.ssim, record.fd_effnet, matched
            ));
        }
    }
    let find = |model: &str, budget: usize| {
        records
            .iter()
            .find(|r| r.model == model && r.tokens == budget)
    };
    let mut improvements = String::new();
    for &budget in &budgets {
        if let (Some(t), Some(b)) = (find("textok", budget), find("baseline", budget)) {
            improvements.push_str(&format!(
                "{:>6} tokens: PSNR {:+.2} dB, SSIM {:+.4}, FD-EffNet {:+.1}%\n",
                budget,
                t.psnr - b.psnr,
                t.ssim - b.ssim,
                100.0 * (t.fd_effnet - b.fd_effnet) / b.fd_effnet.max(1e-12)
            ));
        }
    }
    if !improvements.is_empty() {
        out.push_str("TexTok vs Baseline:\n");
        out.push_str(&improvements);
    }
    out
}

/// A contact sheet: one row per image, columns original | TexTok at each budget | Baseline at
/// each budget, each cell `size` pixels, 4-pixel white gutters.
pub fn contact_sheet(rows: &[Vec<image::Rgb32FImage>], size: u32) -> image::Rgb32FImage {
    let gutter = 4;
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let width = columns * (size + gutter) + gutter;
    let height = rows.len() as u32 * (size + gutter) + gutter;
    let mut sheet = image::Rgb32FImage::from_pixel(width, height, image::Rgb([1.0; 3]));
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let resized = if cell.dimensions() == (size, size) {
                cell.clone()
            } else {
                image::imageops::resize(cell, size, size, image::imageops::FilterType::Triangle)
            };
            let (x0, y0) = (
                gutter + c as u32 * (size + gutter),
                gutter + r as u32 * (size + gutter),
            );
            image::imageops::replace(&mut sheet, &resized, x0 as i64, y0 as i64);
        }
    }
    sheet
}

/// One row of the generation comparison (the paper's gFID claim, with FD-EffNet).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationRecord {
    pub model: String,
    pub tokens: usize,
    pub steps: usize,
    pub cfg: f32,
    /// [`crate::model::dit::SampleSettings::guidance_interval`] (absent: every step).
    #[serde(default)]
    pub guidance_interval: Option<(usize, usize)>,
    pub images: usize,
    pub references: usize,
    pub fd_effnet: f64,
    /// Share of generated images whose own validation image (the one whose caption they were
    /// given) is among the [`CAPTION_MATCH_K`] references nearest to them in EfficientNet
    /// features ([`caption_match_rate`]); chance is k / references. (Absent in older records.)
    #[serde(default)]
    pub caption_match: Option<f64>,
    /// Per generated image: which validation image's caption it was given and how many
    /// references of other captions are nearer to it than the nearest of its own
    /// ([`caption_ranks`]; a match is a rank below [`CAPTION_MATCH_K`]), so the rate can be
    /// split by kind of caption afterwards. (Absent in older records.)
    #[serde(default)]
    pub per_image: Vec<ImageMatch>,
    /// [`caption_contrast`] on the validation items whose captions were given (absent in older
    /// records).
    #[serde(default)]
    pub caption_contrast: Option<CaptionContrast>,
}

/// One generated image of a [`GenerationRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMatch {
    /// The validation image's path inside the dataset folder.
    pub file: String,
    pub caption: String,
    /// References of other captions nearer than the nearest of its own (`None`: its
    /// validation image is not among the references).
    pub rank: Option<usize>,
}

/// How many nearest references count as a match in [`caption_match_rate`].
pub const CAPTION_MATCH_K: usize = 5;

/// How recognisable generations are for their captions, without a text-image model: the share
/// of `generated` rows (features of the image made from validation caption `truth[i]`) for
/// which a reference with that caption is among the `k` references nearest to them (squared
/// Euclidean distance; ties count against). `caption_groups[j]` says which references share a
/// caption ([`caption_groups`]): 67 clip-art stars all captioned "gramastar", say, are one
/// target, not one arbitrary star among 67 (which only chance would find). FD-EffNet measures
/// whether the images look like the set; this measures whether each looks like what it was
/// asked for.
pub fn caption_match_rate(
    generated: &[Vec<f32>],
    references: &[Vec<f32>],
    truth: &[usize],
    caption_groups: &[usize],
    k: usize,
) -> f64 {
    match_rate(
        &caption_ranks(generated, references, truth, caption_groups),
        k,
    )
}

/// The share of [`caption_ranks`] (those that are not `None`) below `k`; 0 for none.
pub fn match_rate(ranks: &[Option<usize>], k: usize) -> f64 {
    let scored: Vec<usize> = ranks.iter().flatten().copied().collect();
    if scored.is_empty() {
        return 0.0;
    }
    scored.iter().filter(|&&rank| rank < k).count() as f64 / scored.len() as f64
}

/// Per row of `generated`: how many references of other captions are at least as near to it
/// as the nearest reference of its own caption (`truth[i]`'s group; ties count against), or
/// `None` where `truth[i]` is no reference. [`caption_match_rate`] counts ranks below k.
pub fn caption_ranks(
    generated: &[Vec<f32>],
    references: &[Vec<f32>],
    truth: &[usize],
    caption_groups: &[usize],
) -> Vec<Option<usize>> {
    let distance = |a: &[f32], b: &[f32]| -> f64 {
        a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
    };
    generated
        .iter()
        .zip(truth)
        .map(|(row, &own_index)| {
            let &group = caption_groups.get(own_index)?;
            let in_group = |j: usize| caption_groups.get(j) == Some(&group);
            let own = references
                .iter()
                .enumerate()
                .filter(|&(j, _)| in_group(j))
                .map(|(_, r)| distance(row, r))
                .fold(f64::INFINITY, f64::min);
            Some(
                references
                    .iter()
                    .enumerate()
                    .filter(|&(j, r)| !in_group(j) && distance(row, r) <= own)
                    .count(),
            )
        })
        .collect()
}

/// One group number per caption, equal for equal captions (after trimming): which references
/// [`caption_match_rate`] takes for one target.
pub fn caption_groups<S: AsRef<str>>(captions: &[S]) -> Vec<usize> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    captions
        .iter()
        .map(|caption| {
            let next = seen.len();
            *seen.entry(caption.as_ref().trim()).or_insert(next)
        })
        .collect()
}

/// Which validation items `gen-eval` generates from: `images` indices into a split of
/// `available` items. The first `images` (repeating the split as needed), or with `spread` the
/// same count evenly spaced through the split, so a short run (a contact sheet) shows every kind
/// of image instead of the first few, which sort together (the split starts with flags).
pub fn caption_indices(available: usize, images: usize, spread: bool) -> Vec<usize> {
    if available == 0 {
        return Vec::new();
    }
    if spread && images <= available {
        (0..images).map(|i| i * available / images).collect()
    } else {
        (0..images).map(|i| i % available).collect()
    }
}

/// EfficientNet-Lite0 pooled features of `images` (one row each), in batches.
pub fn effnet_features(
    effnet: &EfficientNet,
    images: &[image::Rgb32FImage],
    device: &burn::tensor::Device,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut rows = Vec::with_capacity(images.len());
    for chunk in images.chunks(16) {
        let refs: Vec<&image::Rgb32FImage> = chunk.iter().collect();
        rows.extend(features_of(effnet, imageio::to_tensor(&refs, device))?);
    }
    Ok(rows)
}

/// What [`generation_fd`] made and measured.
pub struct GeneratedSet {
    pub fd_effnet: f64,
    /// The first `keep_images` generated images (for a contact sheet).
    pub images: Vec<image::Rgb32FImage>,
    /// EfficientNet features of every generated image, one row each, in caption order.
    pub features: Vec<Vec<f32>>,
}

/// Generates one image per caption (seeds `settings.seed + i`, in batches) and measures the
/// FD-EffNet between them and the references' features ([`effnet_features`]). Each batch is
/// reduced to its features as it is made, and only the first `keep_images` images are kept: a
/// 128-pixel image in f32 takes 192 KiB, so 50,000 of them would need 10 GB.
#[allow(clippy::too_many_arguments)]
pub fn generation_fd(
    engine: &crate::pipeline::GenerateEngine,
    captions: &[String],
    reference_features: &[Vec<f32>],
    effnet: &EfficientNet,
    settings: &crate::model::dit::SampleSettings,
    keep_images: usize,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> anyhow::Result<GeneratedSet> {
    const BATCH: usize = 16;
    anyhow::ensure!(
        captions.len() >= 2 && reference_features.len() >= 2,
        "FD-EffNet needs at least 2 generated and 2 reference images"
    );
    let total = captions.len().div_ceil(BATCH);
    let mut kept = Vec::with_capacity(keep_images.min(captions.len()));
    let mut features = Vec::with_capacity(captions.len());
    for (index, chunk) in captions.chunks(BATCH).enumerate() {
        cancel.check()?;
        let batch_settings = crate::model::dit::SampleSettings {
            seed: settings.seed.wrapping_add((index * BATCH) as u64),
            ..settings.clone()
        };
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let batch = crate::pipeline::generate_for_captions(
            engine,
            &chunk,
            &batch_settings,
            &crate::jobs::NoProgress,
            cancel,
        )?;
        features.extend(effnet_features(effnet, &batch, &engine.device.device)?);
        let room = keep_images.saturating_sub(kept.len());
        kept.extend(batch.into_iter().take(room));
        progress.report(Progress {
            done: index + 1,
            total,
            message: format!("generated {} images", features.len()),
        });
    }
    Ok(GeneratedSet {
        fd_effnet: super::fd::frechet_distance(&features, reference_features),
        images: kept,
        features,
    })
}

/// Diffusion timesteps at which [`caption_contrast`] compares captions: where the caption
/// matters (at t <= 300 the noisy tokens themselves say nearly everything; measured on the
/// shipped DiT, whose losses with the right and the null caption are equal there).
pub const CONTRAST_TIMESTEPS: [usize; 3] = [500, 700, 900];

/// Whether a DiT reads *which* caption it is given or only what kind of caption it is: its
/// denoising loss on real tokens (v-prediction MSE, per timestep in [`CONTRAST_TIMESTEPS`]) with
/// each item's own caption, with the most similar *other* caption of the set, and with the null
/// caption. A DiT that has learned only the caption's kind ("an emoji of a geometric shape")
/// does as well with "yellow circle" as with "red circle".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionContrast {
    pub timesteps: Vec<usize>,
    /// Mean loss per timestep with each item's own caption.
    pub own: Vec<f64>,
    /// ... with the other caption nearest to it ([`nearest_other`]).
    pub nearest: Vec<f64>,
    /// ... with the empty (null) caption.
    pub null: Vec<f64>,
}

impl CaptionContrast {
    /// The share of the caption's benefit (null loss minus own loss, summed over timesteps)
    /// that is lost when the most similar other caption is given instead: 0 when the DiT reads
    /// only what similar captions share, 1 when a similar caption helps no more than none, and
    /// above 1 when it misleads (does worse than none); no upper bound. `None` when the
    /// captions do not help at all (nothing to share out).
    pub fn specificity(&self) -> Option<f64> {
        let sum = |values: &[f64]| values.iter().sum::<f64>();
        let benefit = sum(&self.null) - sum(&self.own);
        (benefit > 0.0).then(|| (sum(&self.nearest) - sum(&self.own)) / benefit)
    }
}

/// For each row, the index of the most similar row of *another* caption by cosine similarity
/// (ties go to the lower index): rows of the same caption text (`captions`, trimmed) are
/// skipped, since giving an image's own caption again measures nothing. Rows are mean-pooled
/// caption embeddings; a row with no other caption maps to itself.
pub fn nearest_other<S: AsRef<str>>(rows: &[Vec<f32>], captions: &[S]) -> Vec<usize> {
    let norm = |a: &[f32]| a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let norms: Vec<f64> = rows.iter().map(|r| norm(r).max(1e-12)).collect();
    (0..rows.len())
        .map(|i| {
            let mut best = (i, f64::NEG_INFINITY);
            for (j, row) in rows.iter().enumerate() {
                let same_caption = captions.get(j).map(|c| c.as_ref().trim())
                    == captions.get(i).map(|c| c.as_ref().trim());
                if j == i || same_caption {
                    continue;
                }
                let dot: f64 = rows[i]
                    .iter()
                    .zip(row)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                let cosine = dot / (norms[i] * norms[j]);
                if cosine > best.1 {
                    best = (j, cosine);
                }
            }
            best.0
        })
        .collect()
}

/// Mean of each caption's real-token embeddings (padding masked out), one row per caption.
fn pooled_rows(text: &crate::model::text_encoder::TextEmbeddings) -> anyhow::Result<Vec<Vec<f32>>> {
    let [batch, tokens, width] = text.hidden.dims();
    let hidden = host(&text.hidden, "caption embeddings")?;
    let mask = host(&text.mask, "caption mask")?;
    Ok((0..batch)
        .map(|b| {
            let mut row = vec![0.0f32; width];
            let mut count = 0.0f32;
            for t in 0..tokens {
                let weight = mask[b * tokens + t];
                count += weight;
                let at = (b * tokens + t) * width;
                for (out, value) in row.iter_mut().zip(&hidden[at..at + width]) {
                    *out += weight * value;
                }
            }
            row.iter_mut().for_each(|v| *v /= count.max(1.0));
            row
        })
        .collect())
}

/// Measures [`CaptionContrast`] for a generator on `images` with their `captions` (at least 2):
/// the tokenizer encodes each image (its first `tokens` tokens, normalised as the DiT was
/// trained), noise from `seed` is added at each of [`CONTRAST_TIMESTEPS`], and the DiT's v
/// prediction is scored with the three captions against the same noise.
pub fn caption_contrast(
    engine: &crate::pipeline::GenerateEngine,
    images: &[image::Rgb32FImage],
    captions: &[String],
    tokens: usize,
    seed: u64,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> anyhow::Result<CaptionContrast> {
    use crate::model::diffusion::{coefficients, seeded_noise};
    use burn::tensor::{Tensor, TensorData};
    const BATCH: usize = 16;
    anyhow::ensure!(
        images.len() == captions.len() && captions.len() >= 2,
        "caption contrast needs at least 2 images, each with its caption"
    );
    let budgets = engine.budgets();
    anyhow::ensure!(
        budgets.contains(&tokens),
        "this generator makes {}..={} tokens, not {tokens}",
        budgets.start(),
        budgets.end()
    );
    let encoder = &engine.text_encoder;
    let mut pooled = Vec::with_capacity(captions.len());
    for chunk in captions.chunks(BATCH) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        pooled.extend(pooled_rows(&encoder.encode(&refs)?)?);
    }
    let nearest = nearest_other(&pooled, captions);
    let device = &engine.device.device;
    let d = engine.dit_config.token_dim;
    let (mean, std) = engine.dit_config.latent_statistics(tokens, device);
    let text_conditioned = engine.textok.model.is_text_conditioned();
    let steps = CONTRAST_TIMESTEPS.len();
    // sums[timestep][own, nearest, null]
    let mut sums = vec![[0.0f64; 3]; steps];
    let mut elements = 0usize;
    for (chunk_index, start) in (0..captions.len()).step_by(BATCH).enumerate() {
        cancel.check()?;
        let end = (start + BATCH).min(captions.len());
        let n = end - start;
        let own: Vec<&str> = captions[start..end].iter().map(String::as_str).collect();
        let other: Vec<&str> = nearest[start..end]
            .iter()
            .map(|&j| captions[j].as_str())
            .collect();
        let texts = [
            encoder.encode(&own)?,
            encoder.encode(&other)?,
            encoder.encode(&vec![""; n])?,
        ];
        let refs: Vec<&image::Rgb32FImage> = images[start..end].iter().collect();
        let x0 = engine
            .textok
            .model
            .encode(
                imageio::to_tensor(&refs, device),
                text_conditioned.then_some(&texts[0]),
            )
            .narrow(1, 0, tokens);
        let x0 = (x0 - mean.clone()) / std.clone();
        for (step, &t) in CONTRAST_TIMESTEPS.iter().enumerate() {
            let t = t.min(engine.schedule.len() - 1);
            let noise = seeded_noise(
                seed.wrapping_add((chunk_index * steps + step) as u64),
                n * tokens * d,
            );
            let eps = Tensor::<3>::from_data(TensorData::new(noise, [n, tokens, d]), device);
            let (s, sigma) = coefficients(engine.schedule.alpha_bars[t]);
            let (s, sigma) = (s as f32, sigma as f32);
            let x_t = x0.clone().mul_scalar(s) + eps.clone().mul_scalar(sigma);
            let target = eps.mul_scalar(s) - x0.clone().mul_scalar(sigma);
            let timesteps = vec![t as f32; n];
            for (which, text) in texts.iter().enumerate() {
                let error = engine.dit.forward(x_t.clone(), &timesteps, text) - target.clone();
                sums[step][which] += error.powi_scalar(2).sum().into_scalar::<f32>() as f64;
            }
        }
        elements += n * tokens * d;
        progress.report(Progress {
            done: end,
            total: captions.len(),
            message: format!("caption contrast: {end} images scored"),
        });
    }
    let column = |which: usize| -> Vec<f64> {
        sums.iter()
            .map(|row| row[which] / elements as f64)
            .collect()
    };
    Ok(CaptionContrast {
        timesteps: CONTRAST_TIMESTEPS.to_vec(),
        own: column(0),
        nearest: column(1),
        null: column(2),
    })
}
