//! Reconstruction quality metrics on RGB images in [0, 1].

pub mod evaluation;
pub mod fd;

use image::Rgb32FImage;

/// Peak signal-to-noise ratio in dB over all channels (peak = 1). Identical images give
/// `f64::INFINITY`; callers print it as "inf".
pub fn psnr(a: &Rgb32FImage, b: &Rgb32FImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "PSNR needs images of one size"
    );
    let n = a.as_raw().len() as f64;
    let mse: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / n;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

/// Structural similarity (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
/// K2 = 0.03, data range 1, computed per channel over the valid window positions and averaged.
pub fn ssim(a: &Rgb32FImage, b: &Rgb32FImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "SSIM needs images of one size"
    );
    let (w, h) = (a.width() as usize, a.height() as usize);
    let window = gaussian_window(11.min(w).min(h), 1.5);
    let channel = |img: &Rgb32FImage, c: usize| -> Vec<f64> {
        img.as_raw()
            .iter()
            .skip(c)
            .step_by(3)
            .map(|v| *v as f64)
            .collect()
    };
    (0..3)
        .map(|c| ssim_channel(&channel(a, c), &channel(b, c), w, h, &window))
        .sum::<f64>()
        / 3.0
}

fn gaussian_window(size: usize, sigma: f64) -> Vec<f64> {
    let centre = (size as f64 - 1.0) / 2.0;
    let weights: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - centre).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|v| v / total).collect()
}

/// Separable "valid" filtering: `[h][w]` -> `[h - k + 1][w - k + 1]`.
fn filter_valid(x: &[f64], w: usize, h: usize, k: &[f64]) -> Vec<f64> {
    let n = k.len();
    let (ow, oh) = (w - n + 1, h - n + 1);
    let mut rows = vec![0.0; h * ow];
    for y in 0..h {
        for x0 in 0..ow {
            rows[y * ow + x0] = (0..n).map(|i| x[y * w + x0 + i] * k[i]).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for y0 in 0..oh {
        for x0 in 0..ow {
            out[y0 * ow + x0] = (0..n).map(|i| rows[(y0 + i) * ow + x0] * k[i]).sum();
        }
    }
    out
}

fn ssim_channel(a: &[f64], b: &[f64], w: usize, h: usize, k: &[f64]) -> f64 {
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let product =
        |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p * q).collect() };
    let mu_a = filter_valid(a, w, h, k);
    let mu_b = filter_valid(b, w, h, k);
    let aa = filter_valid(&product(a, a), w, h, k);
    let bb = filter_valid(&product(b, b), w, h, k);
    let ab = filter_valid(&product(a, b), w, h, k);
    let n = mu_a.len();
    (0..n)
        .map(|i| {
            let (ma, mb) = (mu_a[i], mu_b[i]);
            let var_a = aa[i] - ma * ma;
            let var_b = bb[i] - mb * mb;
            let cov = ab[i] - ma * mb;
            ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (var_a + var_b + c2))
        })
        .sum::<f64>()
        / n as f64
}

/// Formats a PSNR for tables: "inf" for identical images.
pub fn format_psnr(value: f64) -> String {
    if value.is_infinite() {
        "inf".to_owned()
    } else {
        format!("{value:.2}")
    }
}
