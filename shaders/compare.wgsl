// Compare pane views of an original and a reconstruction, drawn through an egui_wgpu paint
// callback into the cell's rectangle:
//   mode 0 (wipe): original left of the divider, reconstruction right of it, a white line between;
//   mode 1 (difference): per-pixel mean absolute difference as a heat map (black -> red -> yellow
//   -> white), amplified by `gain`.
// Both textures hold sRGB-encoded bytes sampled without conversion; `srgb_target` says the render
// target encodes on write, so we decode first to keep the colours the user sees unchanged.

struct Params {
    uv_min: vec2<f32>,
    uv_max: vec2<f32>,
    divider: f32,
    mode: u32,
    gain: f32,
    line_width: f32,
    srgb_target: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var original: texture_2d<f32>;
@group(0) @binding(2) var reconstruction: texture_2d<f32>;
@group(0) @binding(3) var pixel_sampler: sampler;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    // Position inside the cell: (0, 0) top left, (1, 1) bottom right.
    @location(0) cell: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0),
        vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
    );
    let corner = corners[index];
    var out: VertexOut;
    out.position = vec4<f32>(corner.x * 2.0 - 1.0, 1.0 - corner.y * 2.0, 0.0, 1.0);
    out.cell = corner;
    return out;
}

// Must match `heat` in app/gui/wipe.rs (the CPU fallback).
fn heat(t: f32) -> vec3<f32> {
    let x = clamp(t, 0.0, 1.0) * 3.0;
    return vec3<f32>(clamp(x, 0.0, 1.0), clamp(x - 1.0, 0.0, 1.0), clamp(x - 2.0, 0.0, 1.0));
}

fn srgb_to_linear(c: vec3<f32>) -> vec3<f32> {
    let low = c / 12.92;
    let high = pow((c + 0.055) / 1.055, vec3<f32>(2.4));
    return select(high, low, c <= vec3<f32>(0.04045));
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let uv = mix(params.uv_min, params.uv_max, in.cell);
    let a = textureSample(original, pixel_sampler, uv).rgb;
    let b = textureSample(reconstruction, pixel_sampler, uv).rgb;
    var color: vec3<f32>;
    if params.mode == 1u {
        let difference = (abs(a.r - b.r) + abs(a.g - b.g) + abs(a.b - b.b)) / 3.0;
        color = heat(difference * params.gain);
    } else if abs(in.cell.x - params.divider) < params.line_width {
        color = vec3<f32>(1.0, 1.0, 1.0);
    } else if in.cell.x < params.divider {
        color = a;
    } else {
        color = b;
    }
    if params.srgb_target == 1u {
        color = srgb_to_linear(color);
    }
    return vec4<f32>(color, 1.0);
}
