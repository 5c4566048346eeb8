//! The Compare pane's wipe and difference views: `shaders/compare.wgsl` drawn through an
//! egui_wgpu paint callback. Where egui does not render with wgpu, the same views are composed on
//! the CPU (same heat map), so the pane works everywhere.

use std::collections::HashMap;
use std::sync::Arc;

use eframe::egui;
use eframe::egui_wgpu::{self, wgpu};
use image::Rgb32FImage;

/// The WGSL source, compiled into the binary.
pub const COMPARE_SHADER: &str = include_str!("../../shaders/compare.wgsl");

/// Which view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipeMode {
    Wipe,
    Difference,
}

/// What one frame of the view shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WipeParams {
    pub mode: WipeMode,
    /// Divider position across the cell, 0..1.
    pub divider: f32,
    /// Difference amplification.
    pub gain: f32,
    pub uv: egui::Rect,
}

/// An image with an identity, so the GPU copy is uploaded once.
#[derive(Clone)]
pub struct SharedImage {
    pub id: u64,
    pub image: Arc<Rgb32FImage>,
}

/// The heat map colour of a difference in `[0, 1]` (black -> red -> yellow -> white).
/// The shader's `heat` is the same function.
pub fn heat(t: f32) -> [f32; 3] {
    let x = t.clamp(0.0, 1.0) * 3.0;
    [
        x.clamp(0.0, 1.0),
        (x - 1.0).clamp(0.0, 1.0),
        (x - 2.0).clamp(0.0, 1.0),
    ]
}

/// The CPU version of the views, at the images' resolution (the uv window is applied by the
/// image widget that shows it).
pub fn compose_cpu(
    original: &Rgb32FImage,
    reconstruction: &Rgb32FImage,
    params: &WipeParams,
) -> Rgb32FImage {
    let (width, height) = original.dimensions();
    let mut out = Rgb32FImage::new(width, height);
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let a = original.get_pixel(x, y).0;
        let b = reconstruction
            .get_pixel(
                x.min(reconstruction.width() - 1),
                y.min(reconstruction.height() - 1),
            )
            .0;
        pixel.0 = match params.mode {
            WipeMode::Difference => {
                let difference =
                    ((a[0] - b[0]).abs() + (a[1] - b[1]).abs() + (a[2] - b[2]).abs()) / 3.0;
                heat(difference * params.gain)
            }
            WipeMode::Wipe => {
                // The divider is a position in the cell; map it into image space through the uv window.
                let u = (x as f32 + 0.5) / width as f32;
                let cell_x = (u - params.uv.min.x) / params.uv.width();
                if cell_x < params.divider { a } else { b }
            }
        };
    }
    out
}

/// GPU objects created once per renderer.
struct WipeResources {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    srgb_target: bool,
    /// GPU copies of images by id, with the tick of their last use.
    textures: HashMap<u64, (wgpu::TextureView, u64)>,
    /// A uniform buffer and bind group per (original, reconstruction) pair with the tick of
    /// their last use: egui runs every callback's `prepare` before any `paint`, so the cells of
    /// one frame cannot share them.
    pairs: HashMap<(u64, u64), (wgpu::Buffer, wgpu::BindGroup, u64)>,
    tick: u64,
}

const UNIFORM_BYTES: u64 = 48;
/// GPU images kept; a frame draws at most two pairs (four images), so the least recently used
/// one is never needed by the current frame.
const MAX_TEXTURES: usize = 16;
const MAX_PAIRS: usize = 8;

/// Removes least recently used entries until `map` holds `max`.
fn evict_least_recent<K: Copy + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    last_used: impl Fn(&V) -> u64,
) {
    while map.len() > max {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| last_used(v))
            .map(|(k, _)| *k)
        else {
            return;
        };
        map.remove(&oldest);
    }
}

/// Registers the pipeline with egui's renderer. Returns false (CPU fallback) without wgpu.
pub fn install(render_state: Option<&egui_wgpu::RenderState>) -> bool {
    let Some(state) = render_state else {
        return false;
    };
    let device = &state.device;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("compare.wgsl"),
        source: wgpu::ShaderSource::Wgsl(COMPARE_SHADER.into()),
    });
    let texture_entry = |binding| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        ty: wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: true },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        count: None,
    };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("compare"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
            texture_entry(1),
            texture_entry(2),
            wgpu::BindGroupLayoutEntry {
                binding: 3,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                count: None,
            },
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("compare"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("compare"),
        layout: Some(&pipeline_layout),
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs_main"),
            compilation_options: Default::default(),
            buffers: &[],
        },
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs_main"),
            compilation_options: Default::default(),
            targets: &[Some(wgpu::ColorTargetState {
                format: state.target_format,
                blend: None,
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        multiview_mask: None,
        cache: None,
    });
    let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
        label: Some("compare"),
        mag_filter: wgpu::FilterMode::Nearest,
        min_filter: wgpu::FilterMode::Linear,
        ..Default::default()
    });
    state
        .renderer
        .write()
        .callback_resources
        .insert(WipeResources {
            pipeline,
            layout,
            sampler,
            srgb_target: state.target_format.is_srgb(),
            textures: HashMap::new(),
            pairs: HashMap::new(),
            tick: 0,
        });
    true
}

/// One paint of the view.
pub struct WipeCallback {
    pub original: SharedImage,
    pub reconstruction: SharedImage,
    pub params: WipeParams,
    /// Divider line half-width as a fraction of the cell.
    pub line_width: f32,
}

fn upload(device: &wgpu::Device, queue: &wgpu::Queue, image: &Rgb32FImage) -> wgpu::TextureView {
    let rgb = crate::data::image::to_rgb8(image);
    let rgba: Vec<u8> = rgb
        .pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2], 255])
        .collect();
    let size = wgpu::Extent3d {
        width: rgb.width(),
        height: rgb.height(),
        depth_or_array_layers: 1,
    };
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("compare image"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        // Plain Unorm: the shader works on the sRGB-encoded values egui shows elsewhere.
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture: &texture,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        &rgba,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * rgb.width()),
            rows_per_image: Some(rgb.height()),
        },
        size,
    );
    texture.create_view(&wgpu::TextureViewDescriptor::default())
}

impl egui_wgpu::CallbackTrait for WipeCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen_descriptor: &egui_wgpu::ScreenDescriptor,
        _egui_encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(resources) = resources.get_mut::<WipeResources>() else {
            return Vec::new();
        };
        resources.tick += 1;
        let tick = resources.tick;
        for image in [&self.original, &self.reconstruction] {
            let entry = resources
                .textures
                .entry(image.id)
                .or_insert_with(|| (upload(device, queue, &image.image), tick));
            entry.1 = tick;
        }
        evict_least_recent(&mut resources.textures, MAX_TEXTURES, |(_, used)| *used);
        let key = (self.original.id, self.reconstruction.id);
        if !resources.pairs.contains_key(&key) {
            let (Some((original, _)), Some((reconstruction, _))) = (
                resources.textures.get(&key.0),
                resources.textures.get(&key.1),
            ) else {
                return Vec::new();
            };
            let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("compare params"),
                size: UNIFORM_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("compare"),
                layout: &resources.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniforms.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(original),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::TextureView(reconstruction),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: wgpu::BindingResource::Sampler(&resources.sampler),
                    },
                ],
            });
            resources.pairs.insert(key, (uniforms, bind_group, tick));
        }
        if let Some(pair) = resources.pairs.get_mut(&key) {
            pair.2 = tick;
        }
        evict_least_recent(&mut resources.pairs, MAX_PAIRS, |(_, _, used)| *used);
        let p = &self.params;
        let words: [u32; 12] = [
            p.uv.min.x.to_bits(),
            p.uv.min.y.to_bits(),
            p.uv.max.x.to_bits(),
            p.uv.max.y.to_bits(),
            p.divider.to_bits(),
            match p.mode {
                WipeMode::Wipe => 0,
                WipeMode::Difference => 1,
            },
            p.gain.to_bits(),
            self.line_width.to_bits(),
            u32::from(resources.srgb_target),
            0,
            0,
            0,
        ];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        if let Some((uniforms, _, _)) = resources.pairs.get(&key) {
            queue.write_buffer(uniforms, 0, &bytes);
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(resources) = resources.get::<WipeResources>() else {
            return;
        };
        let key = (self.original.id, self.reconstruction.id);
        let Some((_, bind_group, _)) = resources.pairs.get(&key) else {
            return;
        };
        render_pass.set_pipeline(&resources.pipeline);
        render_pass.set_bind_group(0, bind_group, &[]);
        render_pass.draw(0..6, 0..1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_map_runs_black_red_yellow_white() {
        assert_eq!(heat(0.0), [0.0, 0.0, 0.0]);
        assert_eq!(heat(1.0 / 3.0), [1.0, 0.0, 0.0]);
        assert_eq!(heat(2.0 / 3.0), [1.0, 1.0, 0.0]);
        assert_eq!(heat(1.0), [1.0, 1.0, 1.0]);
        assert_eq!(heat(7.0), [1.0, 1.0, 1.0]);
    }

    #[test]
    fn cpu_wipe_splits_at_the_divider_and_difference_is_black_for_equal_images() {
        let a = Rgb32FImage::from_pixel(8, 8, image::Rgb([1.0, 0.0, 0.0]));
        let b = Rgb32FImage::from_pixel(8, 8, image::Rgb([0.0, 0.0, 1.0]));
        let full = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
        let wipe = compose_cpu(
            &a,
            &b,
            &WipeParams {
                mode: WipeMode::Wipe,
                divider: 0.5,
                gain: 1.0,
                uv: full,
            },
        );
        assert_eq!(wipe.get_pixel(1, 3).0, [1.0, 0.0, 0.0]);
        assert_eq!(wipe.get_pixel(6, 3).0, [0.0, 0.0, 1.0]);
        let same = compose_cpu(
            &a,
            &a,
            &WipeParams {
                mode: WipeMode::Difference,
                divider: 0.5,
                gain: 4.0,
                uv: full,
            },
        );
        assert!(same.pixels().all(|p| p.0 == [0.0, 0.0, 0.0]));
        let diff = compose_cpu(
            &a,
            &b,
            &WipeParams {
                mode: WipeMode::Difference,
                divider: 0.5,
                gain: 1.0,
                uv: full,
            },
        );
        assert_eq!(diff.get_pixel(0, 0).0, heat(2.0 / 3.0));
    }
}
