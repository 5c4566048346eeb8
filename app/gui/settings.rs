//! Settings pane: compute device, model files, defaults, and what the app is using right now.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;

use eframe::egui;

use super::AppContext;
use crate::device::{AdapterSummary, DeviceChoice};
use crate::jobs::{Job, JobState};

/// Which model path a file dialog is choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelSlot {
    TexTok,
    Baseline,
    Dit,
    GenerationDecoder,
}

#[derive(Default)]
pub struct SettingsPane {
    adapters: Option<Result<Vec<AdapterSummary>, String>>,
    adapter_job: Option<Job<Vec<AdapterSummary>>>,
    dialog: Option<(ModelSlot, Receiver<Vec<PathBuf>>)>,
    /// A checkpoint path typed in, for desktops where no file dialog can be shown.
    pub typed_path: String,
}

/// Sets the model file of `slot` (`None`: the shipped one); the engines reload on the change.
fn use_model(app: &mut AppContext, slot: ModelSlot, path: Option<PathBuf>) {
    let settings = &mut app.state.settings;
    match slot {
        ModelSlot::TexTok => settings.textok = path,
        ModelSlot::Baseline => settings.baseline = path,
        ModelSlot::Dit => settings.dit = path,
        ModelSlot::GenerationDecoder => settings.generation_decoder = path,
    }
}

/// Resident memory of this process in bytes (Linux; `None` elsewhere).
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

impl SettingsPane {
    /// Acts on the model file dialog's answer (called every frame: the dialog does not hold
    /// the window, so another pane may be shown when it is answered).
    pub fn poll_dialog(&mut self, app: &mut AppContext) {
        if let Some((slot, receiver)) = &self.dialog
            && let Some(picked) = super::dialog_answer(receiver, &mut app.notices)
        {
            if let Some(path) = picked.into_iter().next() {
                use_model(app, *slot, Some(path));
            }
            self.dialog = None;
        }
    }

    /// Opens a checkpoint file dialog for `slot` (answered in [`Self::poll_dialog`]).
    fn choose_checkpoint(&mut self, app: &AppContext, slot: ModelSlot) {
        let receiver = super::pick_in_background(app.notify.clone(), || {
            rfd::FileDialog::new()
                .add_filter("Checkpoint", &["safetensors"])
                .pick_file()
                .into_iter()
                .collect()
        });
        self.dialog = Some((slot, receiver));
    }

    /// Whether the adapter list is in: until then a "looking for GPUs" line stands where it
    /// goes, and everything below moves when it arrives.
    pub fn settled(&self) -> bool {
        self.adapters.is_some()
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        if self.adapters.is_none() && self.adapter_job.is_none() {
            self.adapter_job = Some(Job::spawn("list adapters", app.notify.clone(), |_, _| {
                Ok(crate::device::list_adapters())
            }));
        }
        if let Some(job) = &mut self.adapter_job {
            match job.poll() {
                JobState::Running(_) => {}
                JobState::Finished(result) => {
                    self.adapters = Some(result.map_err(|e| format!("{e:#}")));
                    self.adapter_job = None;
                }
                JobState::Cancelled | JobState::Collected => self.adapter_job = None,
            }
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.heading("Device");
            ui.horizontal(|ui| {
                let device = &mut app.state.settings.device;
                ui.radio_value(device, DeviceChoice::Auto, "Auto")
                    .on_hover_text("A hardware GPU if there is one, else the CPU (software GPUs are slower than the CPU)");
                ui.radio_value(device, DeviceChoice::Gpu, "GPU");
                ui.radio_value(device, DeviceChoice::Cpu, "CPU");
            });
            match &self.adapters {
                None => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("looking for GPUs…");
                    });
                }
                Some(Ok(adapters)) if adapters.is_empty() => {
                    ui.label("No GPU adapter found: models run on the CPU.");
                }
                Some(Ok(adapters)) => {
                    for adapter in adapters {
                        let kind = if adapter.is_hardware { "hardware" } else { "software" };
                        ui.label(format!("{}: {}, {} ({kind})", adapter.name, adapter.device_type, adapter.backend));
                    }
                }
                Some(Err(error)) => {
                    ui.colored_label(ui.visuals().error_fg_color, error);
                }
            }
            match app.engines.device_description() {
                Some(description) => ui.label(format!("Models run on: {description}")),
                None if app.engines.loading() => ui.label("Models are loading…"),
                None => ui.weak("Models load when a pane needs them."),
            };
            match resident_memory() {
                Some(bytes) => ui.label(format!("Memory in use: {:.0} MiB (this process)", bytes as f64 / (1024.0 * 1024.0))),
                None => ui.weak("Memory in use: not available on this system"),
            };
            ui.label(format!(
                "UI frame time: {:.1} ms average, {:.1} ms worst (last {} frames)",
                app.frame_times.mean_ms(),
                app.frame_times.max_ms(),
                app.frame_times.len()
            ));

            ui.separator();
            ui.heading("Models");
            let shipped = app.engines.key().shipped.clone();
            let rows = [
                (ModelSlot::TexTok, "TexTok", app.state.settings.textok.clone(), shipped.textok.clone()),
                (ModelSlot::Baseline, "Baseline", app.state.settings.baseline.clone(), shipped.baseline.clone()),
                (ModelSlot::Dit, "DiT", app.state.settings.dit.clone(), shipped.dit.clone()),
            ];
            egui::Grid::new("model-paths").num_columns(3).show(ui, |ui| {
                for (slot, label, chosen, default) in rows {
                    ui.label(label);
                    match &chosen {
                        Some(path) => ui.label(path.display().to_string()),
                        None if default.exists() => ui.label(format!("shipped: {}", default.display())),
                        None => ui.colored_label(
                            ui.visuals().warn_fg_color,
                            format!("shipped model missing ({}): a RANDOMLY INITIALISED stand-in is used", default.display()),
                        ),
                    };
                    ui.horizontal(|ui| {
                        if ui.add_enabled(self.dialog.is_none(), egui::Button::new("Choose…")).clicked() {
                            self.choose_checkpoint(app, slot);
                        }
                        if chosen.is_some() && ui.button("Use shipped").clicked() {
                            use_model(app, slot, None);
                        }
                    });
                    ui.end_row();
                }
            });
            // Where no file dialog can be shown (a desktop without a portal), or to paste.
            ui.horizontal(|ui| {
                let label = ui.label("Or a checkpoint path:");
                ui.add(
                    egui::TextEdit::singleline(&mut self.typed_path)
                        .hint_text("/path/to/model.safetensors")
                        .desired_width(320.0),
                )
                .labelled_by(label.id);
                for (slot, name) in [
                    (ModelSlot::TexTok, "Use as TexTok"),
                    (ModelSlot::Baseline, "Use as Baseline"),
                    (ModelSlot::Dit, "Use as DiT"),
                    (ModelSlot::GenerationDecoder, "Use as generation decoder"),
                ] {
                    if ui.button(name).clicked() {
                        let path = PathBuf::from(self.typed_path.trim());
                        if path.is_file() {
                            use_model(app, slot, Some(path));
                            self.typed_path.clear();
                        } else {
                            app.notices.error(format!(
                                "{}: no such file; type the path of a .safetensors checkpoint",
                                path.display()
                            ));
                        }
                    }
                }
            });
            // Generate's decoder: a chosen one, else a chosen TexTok file, else the shipped one.
            let key = app.engines.key();
            // One look at the disk per frame (whether the generation decoder exists).
            let decoder = key.generation_decoder_path();
            let why = match (&key.generation_decoder, &key.textok) {
                (Some(_), _) => " (the chosen generation decoder)",
                (None, Some(_)) => " (the chosen TexTok)",
                (None, None) if decoder == shipped.generation_decoder => {
                    " (TexTok's detokenizer trained on generated-like tokens; Compare uses TexTok)"
                }
                (None, None) => {
                    " (the shipped TexTok: the models folder has no generation decoder)"
                }
            };
            let chosen_decoder = key.generation_decoder.is_some();
            ui.horizontal_wrapped(|ui| {
                ui.label(format!("Generate decodes with: {}{why}", decoder.display()));
                if ui
                    .add_enabled(self.dialog.is_none(), egui::Button::new("Choose decoder…"))
                    .on_hover_text(
                        "A TexTok file Generate decodes with (a decoder fine-tuned for \
                         generation, say); it must make the DiT's tokens",
                    )
                    .clicked()
                {
                    self.choose_checkpoint(app, ModelSlot::GenerationDecoder);
                }
                if chosen_decoder && ui.button("Automatic decoder").clicked() {
                    use_model(app, ModelSlot::GenerationDecoder, None);
                }
            });
            ui.label(format!("Text encoder: {}", shipped.text_encoder_dir.display()));
            if ui.button("Reload models").clicked() {
                app.engines.reload();
            }

            ui.separator();
            ui.heading("Defaults");
            ui.weak(
                "For a new Generate form, Generate's Reset button and the Compare slider until \
                 it is moved; Apply sets them now.",
            );
            let settings = &mut app.state.settings;
            egui::Grid::new("defaults").num_columns(2).show(ui, |ui| {
                let label = ui.label("Token budget");
                ui.add(egui::Slider::new(&mut settings.default_budget, 32..=256)).labelled_by(label.id);
                ui.end_row();
                let label = ui.label("Sampling steps");
                ui.add(egui::DragValue::new(&mut settings.default_steps).range(1..=1000)).labelled_by(label.id);
                ui.end_row();
                let label = ui.label("Guidance (CFG)");
                ui.add(egui::Slider::new(&mut settings.default_cfg, 0.0..=15.0)).labelled_by(label.id);
                ui.end_row();
            });
            if ui
                .button("Apply to Generate and Compare")
                .on_hover_text("Sets Generate's tokens, steps and guidance and Compare's budget to these")
                .clicked()
            {
                app.state.apply_default_generation_settings();
                app.state.compare_budget = None;
            }
            ui.separator();
            ui.label(format!("Data folder (library, gallery, fine-tuning runs): {}", app.data_dir.display()));
        });
    }
}
