//! FD-EffNet: the Fréchet distance between two sets of EfficientNet-Lite0 pooled features,
//! `|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))`. Same formula as FID, different
//! network, so its values are not comparable with published FIDs.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Samples as rows, centred; with their mean.
fn centred(rows: &[Vec<f32>]) -> (DMatrix<f64>, DVector<f64>) {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    let mut data = DMatrix::from_fn(n, d, |i, j| rows[i][j] as f64);
    let mean = DVector::from_fn(d, |j, _| data.column(j).mean());
    for mut row in data.row_iter_mut() {
        row -= mean.transpose();
    }
    (data, mean)
}

/// Mean and covariance (unbiased) of `rows` (each row one sample).
pub fn mean_and_covariance(rows: &[Vec<f32>]) -> (DVector<f64>, DMatrix<f64>) {
    let (x, mean) = centred(rows);
    let covariance = x.transpose() * &x / ((rows.len().max(2) - 1) as f64);
    (mean, covariance)
}

/// Sum of the square roots of the (clamped) eigenvalues of a symmetric PSD matrix.
fn trace_sqrt(m: DMatrix<f64>) -> f64 {
    let symmetric = (&m + m.transpose()) * 0.5;
    SymmetricEigen::new(symmetric)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum()
}

/// Fréchet distance between Gaussians fitted to `a` and `b` (each at least 2 samples of one
/// width).
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (x1, mu1) = centred(a);
    let (x2, mu2) = centred(b);
    let (c1, c2) = ((a.len().max(2) - 1) as f64, (b.len().max(2) - 1) as f64);
    let d = mu1.len();
    let diff = (&mu1 - &mu2).norm_squared();
    let (trace1, trace2) = (x1.norm_squared() / c1, x2.norm_squared() / c2);
    // With S = X^T X / c, the non-zero eigenvalues of S1 S2 are those of the small symmetric
    // PSD matrix (X1 X2^T)(X1 X2^T)^T / (c1 c2): n1 x n1 instead of d x d when n1 < d.
    let cross = if a.len() < d {
        let k = &x1 * x2.transpose();
        trace_sqrt(&k * k.transpose() / (c1 * c2))
    } else {
        // Tr((S1 S2)^1/2) = Tr((A S2 A)^1/2) with A = S1^1/2 symmetric.
        let s1 = x1.transpose() * &x1 / c1;
        let s2 = x2.transpose() * &x2 / c2;
        let eigen = SymmetricEigen::new(s1);
        let root = eigen.eigenvalues.map(|v| v.max(0.0).sqrt());
        let a_half =
            &eigen.eigenvectors * DMatrix::from_diagonal(&root) * eigen.eigenvectors.transpose();
        trace_sqrt(&a_half * s2 * &a_half)
    };
    (diff + trace1 + trace2 - 2.0 * cross).max(0.0)
}
