use burn::tensor::{Device, DeviceKind};
use textok_studio::checkpoint::StoredPrecision;
use textok_studio::data::image as imageio;
use textok_studio::device::list_adapters;
use textok_studio::model::textok::TexTok;

use crate::common::*;

/// The same tiny TexTok on the wgpu and CPU backends agrees to 1e-3. CI sets
/// TEXTOK_REQUIRE_WGPU=1 (it installs lavapipe), where a missing adapter is a failure.
#[test]
fn wgpu_and_cpu_backends_agree_on_tiny() {
    let adapters = list_adapters();
    if adapters.is_empty() {
        assert!(
            std::env::var_os("TEXTOK_REQUIRE_WGPU").is_none(),
            "TEXTOK_REQUIRE_WGPU is set but wgpu found no adapter"
        );
        eprintln!(
            "SKIPPED wgpu_and_cpu_backends_agree_on_tiny: wgpu found no adapter on this machine"
        );
        return;
    }
    eprintln!("wgpu adapters: {adapters:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let (cpu_model, config) = tiny(true, 21);
    cpu_model
        .save(&config, &path, StoredPrecision::F32)
        .unwrap();
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let (gpu_model, _) = TexTok::load(&path, &gpu).unwrap();

    let image = image::Rgb32FImage::from_fn(32, 32, |x, y| {
        image::Rgb([x as f32 / 31.0, y as f32 / 31.0, ((x + y) % 7) as f32 / 6.0])
    });
    let caption = "a colourful gradient";
    let cpu_text = embed(&[caption]);
    let gpu_text = textok_studio::model::text_encoder::TextEmbeddings {
        hidden: cpu_text.hidden.clone().to_device(&gpu),
        mask: cpu_text.mask.clone().to_device(&gpu),
        lengths: cpu_text.lengths.clone(),
    };
    let cpu_out = cpu_model.reconstruct(imageio::to_tensor(&[&image], &cpu()), Some(&cpu_text), 48);
    let gpu_out = gpu_model.reconstruct(imageio::to_tensor(&[&image], &gpu), Some(&gpu_text), 48);
    let diff = max_abs_diff(cpu_out, gpu_out.to_device(&cpu()));
    assert!(diff <= 1e-3, "wgpu and CPU differ by {diff}");
}
