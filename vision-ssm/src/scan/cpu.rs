//! PLACEHOLDER (lead): simple per-channel CPU scan, replaced by the fused kernel.

/// Sizes of one selective-scan call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanDims {
    /// Batch size B.
    pub batch: usize,
    /// Directions K.
    pub k_dirs: usize,
    /// Channels D = K·E.
    pub channels: usize,
    /// State size N.
    pub d_state: usize,
    /// Sequence length L.
    pub len: usize,
}
/// Borrowed inputs of the scan.
pub struct ScanInputs<'a> {
    /// u
    pub u: &'a [f32],
    /// delta
    pub delta: &'a [f32],
    /// a
    pub a: &'a [f32],
    /// bm
    pub bm: &'a [f32],
    /// cm
    pub cm: &'a [f32],
    /// d
    pub d_skip: &'a [f32],
    /// bias
    pub delta_bias: &'a [f32],
}
/// Gradients.
pub struct ScanGrads {
    /// u
    pub u: Vec<f32>,
    /// delta
    pub delta: Vec<f32>,
    /// a
    pub a: Vec<f32>,
    /// bm
    pub bm: Vec<f32>,
    /// cm
    pub cm: Vec<f32>,
    /// d
    pub d_skip: Vec<f32>,
    /// bias
    pub delta_bias: Vec<f32>,
}
impl ScanDims {
    /// check
    pub fn check(&self, x: &ScanInputs) -> Result<(), String> {
        let (b, k, d, n, l) = (self.batch, self.k_dirs, self.channels, self.d_state, self.len);
        if k == 0 || d % k != 0 { return Err("D % K".into()); }
        if x.u.len() != b * d * l || x.delta.len() != b * d * l || x.a.len() != d * n
            || x.bm.len() != b * k * n * l || x.cm.len() != b * k * n * l || x.d_skip.len() != d || x.delta_bias.len() != d {
            return Err("lengths".into());
        }
        Ok(())
    }
}
fn softplus(x: f32) -> f32 { if x > 20.0 { x } else { x.exp().ln_1p() } }
/// fwd
pub fn scan_forward(dims: ScanDims, x: &ScanInputs) -> Vec<f32> {
    let (b_, k_, d_, n_, l_) = (dims.batch, dims.k_dirs, dims.channels, dims.d_state, dims.len);
    let e_ = d_ / k_;
    let mut y = vec![0.0; b_ * d_ * l_];
    for b in 0..b_ { for d in 0..d_ { let k = d / e_; let mut h = vec![0.0f32; n_];
        for l in 0..l_ { let i = (b * d_ + d) * l_ + l; let dt = softplus(x.delta[i] + x.delta_bias[d]);
            let mut acc = 0.0;
            for n in 0..n_ { let j = ((b * k_ + k) * n_ + n) * l_ + l;
                h[n] = (dt * x.a[d * n_ + n]).exp() * h[n] + dt * x.bm[j] * x.u[i]; acc += x.cm[j] * h[n]; }
            y[i] = acc + x.d_skip[d] * x.u[i]; } } }
    y
}
/// bwd
pub fn scan_backward(dims: ScanDims, x: &ScanInputs, dy: &[f32]) -> ScanGrads {
    let (b_, k_, d_, n_, l_) = (dims.batch, dims.k_dirs, dims.channels, dims.d_state, dims.len);
    let e_ = d_ / k_;
    let mut g = ScanGrads { u: vec![0.0; x.u.len()], delta: vec![0.0; x.u.len()], a: vec![0.0; x.a.len()], bm: vec![0.0; x.bm.len()], cm: vec![0.0; x.cm.len()], d_skip: vec![0.0; d_], delta_bias: vec![0.0; d_] };
    let mut hs = vec![0.0f32; (l_ + 1) * n_];
    for b in 0..b_ { for d in 0..d_ { let k = d / e_;
        for l in 0..l_ { let i = (b * d_ + d) * l_ + l; let dt = softplus(x.delta[i] + x.delta_bias[d]);
            for n in 0..n_ { let j = ((b * k_ + k) * n_ + n) * l_ + l;
                hs[(l + 1) * n_ + n] = (dt * x.a[d * n_ + n]).exp() * hs[l * n_ + n] + dt * x.bm[j] * x.u[i]; } }
        let mut gh = vec![0.0f32; n_];
        for l in (0..l_).rev() { let i = (b * d_ + d) * l_ + l; let z = x.delta[i] + x.delta_bias[d]; let dt = softplus(z);
            let mut du = x.d_skip[d] * dy[i]; let mut ddt = 0.0;
            g.d_skip[d] += dy[i] * x.u[i];
            for n in 0..n_ { let j = ((b * k_ + k) * n_ + n) * l_ + l; let a = x.a[d * n_ + n];
                let h = hs[(l + 1) * n_ + n]; let hp = hs[l * n_ + n];
                g.cm[j] += dy[i] * h; gh[n] += x.cm[j] * dy[i];
                let da = (dt * a).exp();
                g.bm[j] += gh[n] * dt * x.u[i]; du += gh[n] * dt * x.bm[j];
                ddt += gh[n] * (a * da * hp + x.bm[j] * x.u[i]);
                g.a[d * n_ + n] += gh[n] * dt * da * hp; gh[n] *= da; }
            g.u[i] = du; let dz = ddt / (1.0 + (-z).exp()); g.delta[i] = dz; g.delta_bias[d] += dz; } } }
    g
}
