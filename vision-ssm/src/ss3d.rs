//! SS3D: the volumetric counterpart of [`Ss2d`](crate::ss2d::Ss2d) (in-projection, depthwise 3D
//! conv, multi-direction selective scan over the volume, out-norm gated by SiLU(z),
//! out-projection), with VMamba's initialisation.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::{activation, Distribution};

use crate::cross_scan3d::orders_of;
use crate::crossing::{Channels, Crossing};
use crate::depthwise::depthwise_3d;
use crate::linear::linear;
use crate::scan::{ScanBackend, ScanKernel};

/// Configuration of [`Ss3d`]; defaults follow VMamba, with all six 3D directions.
#[derive(Config, Debug)]
pub struct Ss3dConfig {
    /// Channels of the input and output.
    pub d_model: usize,
    /// Size N of the state per channel.
    #[config(default = 16)]
    pub d_state: usize,
    /// Inner channels = expand · d_model.
    #[config(default = 2)]
    pub expand: usize,
    /// Rank of the step-size projection; `None` means ceil(d_model / 16).
    #[config(default = "None")]
    pub dt_rank: Option<usize>,
    /// Kernel size of the depthwise convolution (the same along every axis).
    #[config(default = 3)]
    pub d_conv: usize,
    /// Smallest initial step size.
    #[config(default = 0.001)]
    pub dt_min: f64,
    /// Largest initial step size.
    #[config(default = 0.1)]
    pub dt_max: f64,
    /// Floor of the initial step size.
    #[config(default = 1e-4)]
    pub dt_init_floor: f64,
    /// The scan implementation the layer runs.
    #[config(default = "ScanKernel::Fused")]
    pub scan_kernel: ScanKernel,
    /// Scan directions K: 2, 4 or 6 (see [`crate::cross_scan3d`]).
    #[config(default = 6)]
    pub directions: usize,
}

/// The SS3D token mixer over a channels-last `[batch, depth, height, width, channels]` volume.
#[derive(Module, Debug)]
pub struct Ss3d<B: Backend> {
    in_proj: Linear<B>,
    conv3d: Conv3d<B>,
    /// `[K, dt_rank + 2N, d_inner]`: per-direction projection to (Δ, B, C).
    x_proj_weight: Param<Tensor<B, 3>>,
    /// `[K, d_inner, dt_rank]`: per-direction low-rank step-size projection.
    dt_projs_weight: Param<Tensor<B, 3>>,
    /// `[K, d_inner]`: step-size bias (inverse softplus of the initial step).
    dt_projs_bias: Param<Tensor<B, 2>>,
    /// `[K·d_inner, N]`: A = −exp(A_log).
    a_logs: Param<Tensor<B, 2>>,
    /// `[K·d_inner]`: skip weights D.
    ds: Param<Tensor<B, 1>>,
    out_norm: LayerNorm<B>,
    out_proj: Linear<B>,
    d_inner: usize,
    d_state: usize,
    dt_rank: usize,
    directions: usize,
    scan_kernel: ScanKernel,
}

/// The per-direction scan parameters of a VMamba layer with `k` directions.
pub(crate) struct ScanParams<B: Backend> {
    pub x_proj_weight: Tensor<B, 3>,
    pub dt_projs_weight: Tensor<B, 3>,
    pub dt_projs_bias: Tensor<B, 2>,
    pub a_logs: Tensor<B, 2>,
    pub ds: Tensor<B, 1>,
}

/// VMamba's initialisation of the scan parameters: projections uniform in ±1/√fan_in, step sizes
/// log-uniform in `[dt_min, dt_max]` (floored) stored as their inverse softplus, A = −(1..=N),
/// D = 1.
#[allow(clippy::too_many_arguments)]
pub(crate) fn vmamba_scan_params<B: Backend>(
    k: usize,
    d_inner: usize,
    dt_rank: usize,
    d_state: usize,
    dt_min: f64,
    dt_max: f64,
    dt_init_floor: f64,
    device: &B::Device,
) -> ScanParams<B> {
    let n = d_state;
    let x_proj_bound = 1.0 / (d_inner as f64).sqrt();
    let x_proj_weight = Tensor::random(
        [k, dt_rank + 2 * n, d_inner],
        Distribution::Uniform(-x_proj_bound, x_proj_bound),
        device,
    );
    let dt_bound = 1.0 / (dt_rank as f64).sqrt();
    let dt_projs_weight = Tensor::random(
        [k, d_inner, dt_rank],
        Distribution::Uniform(-dt_bound, dt_bound),
        device,
    );
    let dt = Tensor::<B, 2>::random(
        [k, d_inner],
        Distribution::Uniform(dt_min.ln(), dt_max.ln()),
        device,
    )
    .exp()
    .clamp_min(dt_init_floor);
    // softplus(b) = dt  <=>  b = log(exp(dt) − 1) = dt + log(1 − exp(−dt)); the second form
    // keeps exp from overflowing for large steps.
    let dt_projs_bias = dt.clone() + (-dt.neg().exp() + 1.0).log();
    let a_logs = Tensor::<B, 1, Int>::arange(1..(n as i64 + 1), device)
        .float()
        .log()
        .reshape([1, n])
        .repeat_dim(0, k * d_inner);
    ScanParams {
        x_proj_weight,
        dt_projs_weight,
        dt_projs_bias,
        a_logs,
        ds: Tensor::ones([k * d_inner], device),
    }
}

impl Ss3dConfig {
    /// Builds an [`Ss3d`] with VMamba's initialisation; panics if `directions` is not 2, 4 or 6.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Ss3d<B> {
        orders_of(self.directions);
        let d_inner = self.expand * self.d_model;
        let dt_rank = self.dt_rank.unwrap_or(self.d_model.div_ceil(16));
        let p = vmamba_scan_params::<B>(
            self.directions,
            d_inner,
            dt_rank,
            self.d_state,
            self.dt_min,
            self.dt_max,
            self.dt_init_floor,
            device,
        );
        let c = self.d_conv;
        Ss3d {
            in_proj: LinearConfig::new(self.d_model, 2 * d_inner)
                .with_bias(false)
                .init(device),
            conv3d: Conv3dConfig::new([d_inner, d_inner], [c, c, c])
                .with_groups(d_inner)
                .with_padding(PaddingConfig3d::Same)
                .init(device),
            x_proj_weight: Param::from_tensor(p.x_proj_weight),
            dt_projs_weight: Param::from_tensor(p.dt_projs_weight),
            dt_projs_bias: Param::from_tensor(p.dt_projs_bias),
            a_logs: Param::from_tensor(p.a_logs),
            ds: Param::from_tensor(p.ds),
            out_norm: LayerNormConfig::new(d_inner).init(device),
            out_proj: LinearConfig::new(d_inner, self.d_model)
                .with_bias(false)
                .init(device),
            d_inner,
            d_state: self.d_state,
            dt_rank,
            directions: self.directions,
            scan_kernel: self.scan_kernel,
        }
    }
}

impl<B: Backend> Ss3d<B> {
    /// The scan implementation the layer runs.
    pub fn scan_kernel(&self) -> ScanKernel {
        self.scan_kernel
    }

    /// The same layer (same weights) running the scan implementation `kernel`.
    pub fn with_scan_kernel(self, kernel: ScanKernel) -> Self {
        Self {
            scan_kernel: kernel,
            ..self
        }
    }

    /// The number of scan directions K.
    pub fn directions(&self) -> usize {
        self.directions
    }
}

impl<B: ScanBackend> Ss3d<B> {
    /// `[batch, depth, height, width, d_model]` -> `[batch, depth, height, width, d_model]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [batch, depth, height, width, _] = x.dims();
        let (di, n, r, k) = (self.d_inner, self.d_state, self.dt_rank, self.directions);
        let len = depth * height * width;
        let xz = linear(&self.in_proj, x);
        let z = xz.clone().narrow(4, di, di);
        let xs = xz.narrow(4, 0, di).permute([0, 4, 1, 2, 3]);
        let xs = activation::silu(depthwise_3d(&self.conv3d, xs));
        let crossing = |channels| Crossing {
            spatial: [depth, height, width],
            directions: k,
            channels,
        };
        let xs = crossing(Channels::First).scan(xs.reshape([batch, di, len])); // [B, K, di, L]

        let x_proj = self
            .x_proj_weight
            .val()
            .unsqueeze::<4>()
            .expand([batch, k, r + 2 * n, di]);
        let x_dbl = x_proj.matmul(xs.clone()); // [B, K, r + 2N, L]
        let dts = x_dbl.clone().narrow(2, 0, r);
        let bs = x_dbl.clone().narrow(2, r, n);
        let cs = x_dbl.narrow(2, r + n, n);
        let dt_proj = self
            .dt_projs_weight
            .val()
            .unsqueeze::<4>()
            .expand([batch, k, di, r]);
        let dts = dt_proj.matmul(dts); // [B, K, di, L]

        let a = self.a_logs.val().exp().neg();
        let y = self.scan_kernel.scan_fn::<B>()(
            xs.reshape([batch, k * di, len]),
            dts.reshape([batch, k * di, len]),
            a,
            bs,
            cs,
            self.ds.val(),
            self.dt_projs_bias.val().reshape([k * di]),
        );
        let y = crossing(Channels::Last).merge(y.reshape([batch, k, di, len])); // [B, L, di]
        let y = y.reshape([batch, depth, height, width, di]);
        let y = self.out_norm.forward(y) * activation::silu(z);
        linear(&self.out_proj, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::{TensorData, Tolerance};

    type Ad = Autodiff<Flex>;

    const SHAPE: [usize; 5] = [1, 2, 3, 4, 4];

    fn random<Bk: Backend, const D: usize>(shape: [usize; D], lo: f64, hi: f64) -> Tensor<Bk, D> {
        Tensor::random(shape, Distribution::Uniform(lo, hi), &Default::default())
    }

    fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32")
    }

    /// A tiny layer whose lazily initialised weights (in_proj, conv, out_proj) already exist, so
    /// that clones of it hold the same ones.
    fn tiny_layer(directions: usize) -> Ss3d<Ad> {
        let mut layer = Ss3dConfig::new(4)
            .with_d_state(3)
            .with_directions(directions)
            .init::<Ad>(&Default::default());
        // Steps and (Δ, B, C) projections of about a trained layer's size, larger than the initial
        // ones, so that the gradients of A and the projections stand well above the finite
        // differences' rounding.
        layer.dt_projs_bias = Param::from_tensor(random([directions, 8], -1.0, 0.5));
        layer.x_proj_weight = Param::from_tensor(random([directions, 1 + 2 * 3, 8], -1.0, 1.0));
        let _ = layer.forward(random(SHAPE, -1.0, 1.0));
        layer
    }

    #[test]
    fn initial_step_sizes_are_the_softplus_of_the_bias() {
        let config = Ss3dConfig::new(8);
        let layer = config.init::<Flex>(&Default::default());
        assert_eq!(layer.directions(), 6);
        assert_eq!(layer.dt_projs_bias.dims(), [6, 16]);
        let dt = values(activation::softplus(layer.dt_projs_bias.val(), 1.0));
        for v in dt {
            assert!(
                (config.dt_min * 0.999..=config.dt_max * 1.001).contains(&f64::from(v)),
                "initial step {v} outside [{}, {}]",
                config.dt_min,
                config.dt_max
            );
        }
    }

    /// Forward pass and input gradient with the fused scan and with the tensor-op loop, for every
    /// number of directions.
    #[test]
    fn fused_scan_matches_tensor_ops_forward_and_gradients() {
        let _serial = crate::host::autodiff_lock();
        for k in [2, 4, 6] {
            let fused = tiny_layer(k);
            assert_eq!(fused.scan_kernel(), ScanKernel::Fused);
            let tensor_ops = fused.clone().with_scan_kernel(ScanKernel::TensorOps);
            assert_eq!(tensor_ops.scan_kernel(), ScanKernel::TensorOps);
            let x = random::<Ad, 5>(SHAPE, -1.0, 1.0).require_grad();
            let g = random::<Ad, 5>(SHAPE, -1.0, 1.0);
            let run = |layer: &Ss3d<Ad>| {
                let y = layer.forward(x.clone());
                assert_eq!(y.dims(), SHAPE);
                let grads = (y.clone() * g.clone()).sum().backward();
                let gx = x.grad(&grads).expect("input gradient");
                let ga = layer.a_logs.val().grad(&grads).expect("A_log gradient");
                (y.into_data(), gx.into_data(), ga.into_data())
            };
            let (y_f, gx_f, ga_f) = run(&fused);
            let (y_t, gx_t, ga_t) = run(&tensor_ops);
            y_f.assert_approx_eq::<f32>(&y_t, Tolerance::rel_abs(1e-4, 1e-5));
            gx_f.assert_approx_eq::<f32>(&gx_t, Tolerance::rel_abs(1e-3, 1e-5));
            ga_f.assert_approx_eq::<f32>(&ga_t, Tolerance::rel_abs(1e-3, 1e-5));
        }
    }

    /// Which tensor of the layer a finite difference perturbs.
    #[derive(Clone, Copy, Debug)]
    enum Wrt {
        Input,
        ALogs,
        XProj,
        DtBias,
        ConvWeight,
    }

    /// `layer` with entry `i` of `which` set to `value` (the input is perturbed by the caller).
    fn with_entry(layer: &Ss3d<Flex>, which: Wrt, i: usize, value: f32) -> Ss3d<Flex> {
        fn set<const D: usize>(t: Tensor<Flex, D>, i: usize, value: f32) -> Param<Tensor<Flex, D>> {
            let shape = t.dims();
            let mut v = values(t);
            v[i] = value;
            Param::from_tensor(Tensor::from_data(
                TensorData::new(v, shape),
                &Default::default(),
            ))
        }
        let mut layer = layer.clone();
        match which {
            Wrt::Input => {}
            Wrt::ALogs => layer.a_logs = set(layer.a_logs.val(), i, value),
            Wrt::XProj => layer.x_proj_weight = set(layer.x_proj_weight.val(), i, value),
            Wrt::DtBias => layer.dt_projs_bias = set(layer.dt_projs_bias.val(), i, value),
            Wrt::ConvWeight => layer.conv3d.weight = set(layer.conv3d.weight.val(), i, value),
        }
        layer
    }

    /// Gradients of `Σ y·g` with respect to the input and four parameters against central finite
    /// differences of the same loss, summed in float64.
    #[test]
    fn gradients_match_finite_differences() {
        let _serial = crate::host::autodiff_lock();
        let layer = tiny_layer(6);
        let x = random::<Ad, 5>(SHAPE, -1.0, 1.0).require_grad();
        let g = random::<Ad, 5>(SHAPE, -1.0, 1.0);
        let grads = (layer.forward(x.clone()) * g.clone()).sum().backward();
        let wrt = [
            Wrt::Input,
            Wrt::ALogs,
            Wrt::XProj,
            Wrt::DtBias,
            Wrt::ConvWeight,
        ];
        let analytic = wrt.map(|which| {
            let grad = match which {
                Wrt::Input => x.grad(&grads).map(values),
                Wrt::ALogs => layer.a_logs.val().grad(&grads).map(values),
                Wrt::XProj => layer.x_proj_weight.val().grad(&grads).map(values),
                Wrt::DtBias => layer.dt_projs_bias.val().grad(&grads).map(values),
                Wrt::ConvWeight => layer.conv3d.weight.val().grad(&grads).map(values),
            };
            grad.unwrap_or_else(|| panic!("no gradient for {which:?}"))
        });

        let inner = layer.valid();
        let x0 = values(x.clone().inner());
        let g0: Vec<f64> = values(g.inner()).into_iter().map(f64::from).collect();
        let loss = |layer: &Ss3d<Flex>, x: &[f32]| -> f64 {
            let x = Tensor::<Flex, 5>::from_data(
                TensorData::new(x.to_vec(), SHAPE),
                &Default::default(),
            );
            let y = values(layer.forward(x));
            y.iter().zip(&g0).map(|(a, b)| f64::from(*a) * b).sum()
        };
        let current = |which: Wrt| -> Vec<f32> {
            match which {
                Wrt::Input => x0.clone(),
                Wrt::ALogs => values(inner.a_logs.val()),
                Wrt::XProj => values(inner.x_proj_weight.val()),
                Wrt::DtBias => values(inner.dt_projs_bias.val()),
                Wrt::ConvWeight => values(inner.conv3d.weight.val()),
            }
        };
        // The forward pass is float32, so the loss carries a rounding of about 1e-7 that a
        // difference quotient divides by h: a large step keeps that near 1e-6, and the
        // extrapolation below removes most of the truncation a large step brings. What is left,
        // about 1e-5, is the floor of the tolerance; the rest is 1% of the gradient's scale.
        let (h, floor) = (6e-2f32, 2e-5);
        for (which, got) in wrt.into_iter().zip(analytic) {
            let at = current(which);
            assert_eq!(got.len(), at.len(), "{which:?}");
            let scale = got.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                scale > 1e-4,
                "{which:?}: gradient is trivially small ({scale})"
            );
            // About 40 entries of each tensor, spread over all of it.
            let stride = (at.len() / 40).max(1);
            let mut worst = 0f64;
            for i in (0..at.len()).step_by(stride) {
                let eval = |value: f32| {
                    let mut xs = x0.clone();
                    if matches!(which, Wrt::Input) {
                        xs[i] = value;
                    }
                    loss(&with_entry(&inner, which, i, value), &xs)
                };
                // Richardson's extrapolation of two central differences cancels their h² term.
                let central = |h: f32| {
                    let (lo, hi) = (at[i] - h, at[i] + h);
                    (eval(hi) - eval(lo)) / f64::from(hi - lo)
                };
                let fd = (4.0 * central(h / 2.0) - central(h)) / 3.0;
                worst = worst.max((f64::from(got[i]) - fd).abs());
            }
            assert!(
                worst <= 1e-2 * f64::from(scale) + floor,
                "{which:?}: worst error {worst} against finite differences, gradient scale {scale}"
            );
        }
    }
}
