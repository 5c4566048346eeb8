//! Choosing where models run: a real GPU through wgpu, or burn's `flex` CPU backend.
//!
//! `auto` never picks a software adapter (llvmpipe, lavapipe, WARP): measured on our CI machine,
//! lavapipe does ~5 GFLOP/s against ~90 for the CPU backend, so a software GPU is only used when
//! the user asks for `gpu` explicitly.

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};

/// What the user asked for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum DeviceChoice {
    /// A hardware GPU if one exists, else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// The best wgpu adapter, even a software one.
    Gpu,
}

/// One wgpu adapter as the system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    /// A discrete, integrated or virtual GPU (not a CPU/software rasteriser).
    pub is_hardware: bool,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.device_type, self.backend)
    }
}

/// The device a model will run on, with a description to show the user.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    pub is_gpu: bool,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no GPU adapter was found (wgpu saw none); choose the CPU device (--device cpu)")]
    NoGpu,
}

/// Lists the adapters wgpu can see, without initialising any of them for compute.
pub fn list_adapters() -> Vec<AdapterSummary> {
    // Enumeration loads drivers, which may misbehave on exotic systems; a panic here must not
    // take the app down, it only means "no GPU".
    std::panic::catch_unwind(|| {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters =
            futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        adapters
            .iter()
            .map(|adapter| {
                let info = adapter.get_info();
                AdapterSummary {
                    name: info.name.clone(),
                    backend: format!("{:?}", info.backend),
                    device_type: format!("{:?}", info.device_type),
                    is_hardware: matches!(
                        info.device_type,
                        wgpu::DeviceType::DiscreteGpu
                            | wgpu::DeviceType::IntegratedGpu
                            | wgpu::DeviceType::VirtualGpu
                    ),
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The CPU backend device.
pub fn cpu() -> SelectedDevice {
    SelectedDevice {
        device: Device::flex(),
        is_gpu: false,
        description: "CPU (burn flex backend)".to_owned(),
    }
}

/// Resolves the user's choice to a device.
pub fn select(choice: DeviceChoice) -> Result<SelectedDevice, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Auto => {
            let adapters = list_adapters();
            match adapters.iter().find(|a| a.is_hardware) {
                Some(adapter) => Ok(gpu_device(adapter)),
                None => {
                    let mut selected = cpu();
                    if let Some(software) = adapters.first() {
                        selected.description.push_str(&format!(
                            "; skipped software adapter {software}, slower than the CPU backend"
                        ));
                    }
                    Ok(selected)
                }
            }
        }
        DeviceChoice::Gpu => {
            let adapters = list_adapters();
            let best = adapters.iter().find(|a| a.is_hardware).or(adapters.first());
            best.map(gpu_device).ok_or(DeviceError::NoGpu)
        }
    }
}

fn gpu_device(adapter: &AdapterSummary) -> SelectedDevice {
    let mut description = format!("GPU {adapter} via wgpu");
    if !adapter.is_hardware {
        description.push_str(" (software adapter: expect it to be slow)");
    }
    SelectedDevice {
        // wgpu's default selection prefers high-performance hardware adapters, the same one
        // `list_adapters` put first among the hardware ones.
        device: Device::wgpu(DeviceKind::DefaultDevice),
        is_gpu: true,
        description,
    }
}

/// Seeds the device's random generator and holds a process-wide lock until the returned guard
/// is dropped: burn's generator is shared by every user of a device, so without the lock a job
/// on another thread (a second training run, the GUI's background work, a parallel test) could
/// draw numbers between the seeding and the caller's draws, and "seeded" initialisations would
/// differ run to run. Every seeded draw in this crate goes through here.
pub fn seeded(device: &Device, seed: u64) -> std::sync::MutexGuard<'static, ()> {
    let guard = random_lock();
    device.seed(seed);
    guard
}

static RANDOM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lock every draw from burn's shared generator takes (see [`seeded`]); model
/// initialisations that are overwritten right away (checkpoint loading) take it too, so they
/// cannot shift another thread's seeded sequence.
pub fn random_lock() -> std::sync::MutexGuard<'static, ()> {
    RANDOM
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds a module under the lock of [`seeded`] (seeding first when `seed` is given) and
/// materialises every parameter before releasing it. burn initialises parameters lazily, on
/// first use: without materialising here the random draws would happen later, outside the lock,
/// wherever the parameter is first read.
pub fn init_module<M: burn::module::Module + burn::store::ModuleSnapshot>(
    device: &Device,
    seed: Option<u64>,
    init: impl FnOnce() -> M,
) -> M {
    let _guard = random_lock();
    if let Some(seed) = seed {
        device.seed(seed);
    }
    let module = init();
    for tensor in module.collect(None, None, true) {
        // Reading the values runs the lazy initialiser; the copy itself is not needed.
        let _ = tensor.to_bytes();
    }
    module
}
