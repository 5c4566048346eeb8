//! Gaussian diffusion over TexTok tokens: 1,000 steps, linear beta from 1e-4 to 0.02,
//! v-prediction, DDIM sampling (deterministic, eta = 0) and classifier-free guidance.
//!
//! With `a = alpha_bar(t)`: `x_t = sqrt(a) x0 + sqrt(1 - a) eps` and the network predicts
//! `v = sqrt(a) eps - sqrt(1 - a) x0`, from which `x0 = sqrt(a) x_t - sqrt(1 - a) v` and
//! `eps = sqrt(1 - a) x_t + sqrt(a) v`.

/// Number of training timesteps.
pub const TRAIN_STEPS: usize = 1000;

/// The noise schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub betas: Vec<f64>,
    /// `alpha_bar(t) = prod_{s <= t} (1 - beta_s)`.
    pub alpha_bars: Vec<f64>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::linear(TRAIN_STEPS, 1e-4, 0.02)
    }
}

impl Schedule {
    /// `steps` betas evenly spaced from `start` to `end`.
    pub fn linear(steps: usize, start: f64, end: f64) -> Self {
        let betas: Vec<f64> = (0..steps)
            .map(|i| start + (end - start) * i as f64 / (steps.max(2) - 1) as f64)
            .collect();
        let mut product = 1.0;
        let alpha_bars = betas
            .iter()
            .map(|beta| {
                product *= 1.0 - beta;
                product
            })
            .collect();
        Self { betas, alpha_bars }
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The `steps` timesteps a DDIM sampler visits, from noisiest to cleanest (evenly spaced,
    /// ending at 0).
    pub fn ddim_timesteps(&self, steps: usize) -> Vec<usize> {
        let steps = steps.clamp(1, self.len());
        let stride = self.len() as f64 / steps as f64;
        (0..steps)
            .rev()
            .map(|i| ((i as f64 * stride).round() as usize).min(self.len() - 1))
            .collect()
    }
}

/// Coefficients `(sqrt(a), sqrt(1 - a))` at `alpha_bar = a`.
pub fn coefficients(alpha_bar: f64) -> (f64, f64) {
    (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt())
}

/// The v-prediction target for clean `x0` and noise `eps` at `alpha_bar`.
pub fn v_target(x0: f64, eps: f64, alpha_bar: f64) -> f64 {
    let (s, n) = coefficients(alpha_bar);
    s * eps - n * x0
}

/// The noisy sample `x_t` for clean `x0` and noise `eps` at `alpha_bar`.
pub fn noisy(x0: f64, eps: f64, alpha_bar: f64) -> f64 {
    let (s, n) = coefficients(alpha_bar);
    s * x0 + n * eps
}

/// `(x0, eps)` recovered from `x_t` and a v prediction.
pub fn split_v(x_t: f64, v: f64, alpha_bar: f64) -> (f64, f64) {
    let (s, n) = coefficients(alpha_bar);
    (s * x_t - n * v, n * x_t + s * v)
}

/// One deterministic DDIM step from `alpha_bar` to `alpha_bar_prev` (1.0 for the final step).
pub fn ddim_step(x_t: f64, v: f64, alpha_bar: f64, alpha_bar_prev: f64) -> f64 {
    let (x0, eps) = split_v(x_t, v, alpha_bar);
    let (s, n) = coefficients(alpha_bar_prev);
    s * x0 + n * eps
}

/// Standard-normal noise from a seed, identical on every device and platform (host-side
/// SplitMix64 + Box-Muller), so a seed always gives the same image.
pub fn seeded_noise(seed: u64, count: usize) -> Vec<f32> {
    let mut rng = crate::train::SplitMix64::new(seed);
    let mut uniform = move || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let (u1, u2) = (uniform(), uniform());
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(count);
    out
}
