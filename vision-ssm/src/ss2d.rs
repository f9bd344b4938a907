//! SS2D: the 2D selective-scan mixer of VMamba (in-projection, depthwise conv, four-direction
//! selective scan, out-norm gated by SiLU(z), out-projection).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation;

use crate::cross_scan::DIRECTIONS;
use crate::crossing::{Channels, Crossing};
use crate::depthwise::depthwise_2d;
use crate::linear::linear;
use crate::scan::{ScanBackend, ScanKernel};
use crate::ss3d::vmamba_scan_params;

/// Configuration of [`Ss2d`]; defaults follow VMamba.
#[derive(Config, Debug)]
pub struct Ss2dConfig {
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
    /// Kernel size of the depthwise convolution.
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
}

/// The SS2D token mixer over a `[batch, height, width, channels]` feature map.
#[derive(Module, Debug)]
pub struct Ss2d<B: Backend> {
    in_proj: Linear<B>,
    conv2d: Conv2d<B>,
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
    scan_kernel: ScanKernel,
}

impl Ss2dConfig {
    /// Builds an [`Ss2d`] with VMamba's initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Ss2d<B> {
        let d_inner = self.expand * self.d_model;
        let dt_rank = self.dt_rank.unwrap_or(self.d_model.div_ceil(16));
        let (k, n) = (DIRECTIONS, self.d_state);
        let params = vmamba_scan_params::<B>(
            k,
            d_inner,
            dt_rank,
            n,
            self.dt_min,
            self.dt_max,
            self.dt_init_floor,
            device,
        );
        Ss2d {
            in_proj: LinearConfig::new(self.d_model, 2 * d_inner)
                .with_bias(false)
                .init(device),
            conv2d: Conv2dConfig::new([d_inner, d_inner], [self.d_conv, self.d_conv])
                .with_groups(d_inner)
                .with_padding(PaddingConfig2d::Same)
                .init(device),
            x_proj_weight: Param::from_tensor(params.x_proj_weight),
            dt_projs_weight: Param::from_tensor(params.dt_projs_weight),
            dt_projs_bias: Param::from_tensor(params.dt_projs_bias),
            a_logs: Param::from_tensor(params.a_logs),
            ds: Param::from_tensor(params.ds),
            out_norm: LayerNormConfig::new(d_inner).init(device),
            out_proj: LinearConfig::new(d_inner, self.d_model)
                .with_bias(false)
                .init(device),
            d_inner,
            d_state: n,
            dt_rank,
            scan_kernel: self.scan_kernel,
        }
    }
}

impl<B: Backend> Ss2d<B> {
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
}

impl<B: ScanBackend> Ss2d<B> {
    /// `[batch, height, width, d_model]` -> `[batch, height, width, d_model]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, height, width, _] = x.dims();
        let (di, n, r, k) = (self.d_inner, self.d_state, self.dt_rank, DIRECTIONS);
        let len = height * width;
        let xz = linear(&self.in_proj, x);
        let z = xz.clone().narrow(3, di, di);
        let xs = xz.narrow(3, 0, di).permute([0, 3, 1, 2]);
        let xs = activation::silu(depthwise_2d(&self.conv2d, xs));
        let crossing = |channels| Crossing {
            spatial: [1, height, width],
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
        let y = y.reshape([batch, height, width, di]);
        let y = self.out_norm.forward(y) * activation::silu(z);
        linear(&self.out_proj, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn initial_step_sizes_are_the_softplus_of_the_bias() {
        let config = Ss2dConfig::new(8);
        let layer = config.init::<Flex>(&Default::default());
        let dt = activation::softplus(layer.dt_projs_bias.val(), 1.0)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert_eq!(dt.len(), DIRECTIONS * 16);
        for v in dt {
            assert!(
                (config.dt_min * 0.999..=config.dt_max * 1.001).contains(&f64::from(v)),
                "initial step {v} outside [{}, {}]",
                config.dt_min,
                config.dt_max
            );
        }
    }
}
