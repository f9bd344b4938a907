//! Data-parallel training on one machine: one model replica per device, each on its own thread,
//! the batch split between them, and their gradients summed on the first device before the one
//! optimiser step. On GPUs a replica per device; on the CPU, replicas share the cores, each with
//! its own rayon pool, which uses two cores better than one replica whose tensor ops are
//! parallel inside (small 2D patches give rayon little to share).
//!
//! Each replica is a `fork` of the model: the same parameters (and `ParamId`s) as fresh autodiff
//! leaves on its device, so burn keeps one autodiff graph per replica and their backward passes
//! do not wait on one another's lock.

use anyhow::{bail, ensure, Context, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::{AutodiffBackend, Device as _, DeviceId, DeviceOps};

use super::network::Trainable;
use crate::model::ModelBackend;

/// The devices of data-parallel training and a worker pool per replica.
pub struct Replicas<B: Backend> {
    devices: Vec<B::Device>,
    pools: Vec<rayon::ThreadPool>,
}

impl<B: Backend> Replicas<B> {
    /// One replica on `device`: plain training, tensor ops on the caller's rayon pool.
    pub fn single(device: &B::Device) -> Self {
        Self {
            devices: vec![device.clone()],
            pools: Vec::new(),
        }
    }

    /// `n` replicas from `main` on: devices `main`, `main + 1`, … of its kind when the backend
    /// has several (GPUs), else `n` replicas sharing the one device (the CPU), each given an
    /// equal share of the worker threads.
    pub fn new(main: &B::Device, n: usize) -> Result<Self> {
        ensure!(n >= 1, "replicas must be at least 1");
        if n == 1 {
            return Ok(Self::single(main));
        }
        let id = main.id();
        let count = B::device_count(id.type_id);
        let devices: Vec<B::Device> = if count > 1 {
            let last = id.index_id as usize + n - 1;
            if last >= count {
                bail!(
                    "{n} replicas from device {} need devices {}..={last}, but this machine has {count}",
                    id.index_id,
                    id.index_id
                );
            }
            (0..n as u16)
                .map(|i| B::Device::from_id(DeviceId::new(id.type_id, id.index_id + i)))
                .collect()
        } else {
            vec![main.clone(); n]
        };
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let threads = rayon::current_num_threads().min(cores).max(n) / n;
        let pools = (0..n)
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads.max(1))
                    .thread_name(move |t| format!("replica-{i}-{t}"))
                    .build()
                    .context("could not start the worker threads of a replica")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { devices, pools })
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are no replicas (never: construction needs at least one).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device that holds the model, the optimiser state and the summed gradients.
    pub fn main(&self) -> &B::Device {
        &self.devices[0]
    }

    /// Worker threads of each replica (the caller's pool when there is one replica).
    pub fn threads_each(&self) -> usize {
        self.pools
            .first()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }
}

/// The deep-supervision loss of one batch (images `dims` = `[batch, channels, spatial…]`, labels
/// `[batch, spatial…]`) and its gradients on the main device, the batch split into contiguous
/// shards, one per replica. Shard losses are weighted by their share of the batch, so the result
/// is the batch mean for cross-entropy; the soft Dice term is a batch Dice within each shard (as
/// data-parallel nnU-Net computes it without gathering across GPUs). With a non-finite loss the
/// gradients are not computed (empty).
pub fn loss_and_grads<B, M>(
    model: &M,
    replicas: &Replicas<B>,
    images: Vec<f32>,
    labels: &[u8],
    dims: &[usize],
    classes: usize,
) -> (f64, GradientsParams)
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
    M: Trainable<B>,
{
    let (batch, channels) = (dims[0], dims[1]);
    let label_len: usize = dims[2..].iter().product();
    let n = replicas.len().min(batch);
    if n <= 1 {
        let loss = model.loss(images, labels, dims, classes, replicas.main());
        let value = loss.clone().into_scalar().elem::<f64>();
        if !value.is_finite() {
            return (value, GradientsParams::new());
        }
        return (value, GradientsParams::from_grads(loss.backward(), model));
    }
    initialize_parameters(model);
    let image_len = channels * label_len;
    let main = replicas.main();
    let results: Vec<(f64, Option<GradientsParams>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (a, b) = (i * batch / n, (i + 1) * batch / n);
                let device = &replicas.devices[i];
                let pool = &replicas.pools[i];
                // A fresh fork per step, never reused after its backward: the fork registers new
                // leaves that the replica holds for its whole forward and backward, so burn
                // 0.21's process-wide graph sweep at the end of another thread's `backward()`
                // (tracel-ai/burn#5573, fixed after 0.21) always finds this graph in use.
                let replica = model.clone().fork(device);
                let shard_images = images[a * image_len..b * image_len].to_vec();
                let shard_labels = &labels[a * label_len..b * label_len];
                let share = (b - a) as f64 / batch as f64;
                let mut shard_dims = dims.to_vec();
                shard_dims[0] = b - a;
                scope.spawn(move || {
                    pool.install(|| {
                        let loss =
                            replica.loss(shard_images, shard_labels, &shard_dims, classes, device)
                                * share;
                        let value = loss.clone().into_scalar().elem::<f64>();
                        if !value.is_finite() {
                            return (value, None);
                        }
                        let grads = GradientsParams::from_grads(loss.backward(), &replica)
                            .to_device(main, &replica);
                        (value, Some(grads))
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let value: f64 = results.iter().map(|(v, _)| v).sum();
    if !value.is_finite() {
        return (value, GradientsParams::new());
    }
    let mut sum = GradientsAccumulator::<M>::new();
    for (_, grads) in results {
        sum.accumulate(model, grads.expect("finite shard losses have gradients"));
    }
    (value, sum.grads())
}

/// Initialises every lazily initialised parameter of `model` in place. burn draws a parameter's
/// initial value on first use, and a clone of a parameter not yet used draws its own: replicas
/// forked from a fresh model would each train different random weights.
fn initialize_parameters<B: Backend, M: Module<B>>(model: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            drop(param.val());
        }
    }
    model.visit(&mut Touch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExperimentConfig;
    use crate::model::SwinUMamba;
    use burn::backend::{Autodiff, Flex};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type Ad = Autodiff<Flex>;

    /// Every parameter gradient of `grads`, in the model's parameter order; empty for a
    /// parameter without one.
    fn flat_grads(model: &SwinUMamba<Ad>, grads: &GradientsParams) -> Vec<Vec<f32>> {
        struct Collect<'a> {
            grads: &'a GradientsParams,
            out: Vec<Vec<f32>>,
        }
        impl ModuleVisitor<Ad> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Ad, D>>) {
                let g = self.grads.get::<Flex, D>(param.id);
                self.out.push(
                    g.map_or_else(Vec::new, |g| g.into_data().into_vec::<f32>().expect("f32")),
                );
            }
        }
        let mut c = Collect {
            grads,
            out: Vec::new(),
        };
        model.visit(&mut c);
        c.out
    }

    #[test]
    fn replica_gradients_are_the_share_weighted_sum_of_shard_gradients() {
        let mut config = ExperimentConfig::preset("tiny").expect("preset");
        config.model.dims = [8, 16, 32, 64];
        config.model.stem_channels = 8;
        let device = Default::default();
        let model = config.model.init::<Ad>(1, 3, &device);
        let (batch, side) = (3, 32);
        let mut rng = StdRng::seed_from_u64(11);
        let images: Vec<f32> = (0..batch * side * side)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let labels: Vec<u8> = (0..batch * side * side)
            .map(|_| rng.random_range(0..3u8))
            .collect();
        let dims = [batch, 1, side, side];

        let two = Replicas::<Ad>::new(&device, 2).expect("replicas");
        assert_eq!(two.len(), 2);
        let (value, grads) = loss_and_grads(&model, &two, images.clone(), &labels, &dims, 3);
        let got = flat_grads(&model, &grads);

        // By hand on one replica: shard 0 is image 0 (share 1/3), shard 1 images 1..3 (2/3).
        let one = Replicas::<Ad>::single(&device);
        let px = side * side;
        let (v0, g0) = loss_and_grads(
            &model,
            &one,
            images[..px].to_vec(),
            &labels[..px],
            &[1, 1, side, side],
            3,
        );
        let (v1, g1) = loss_and_grads(
            &model,
            &one,
            images[px..].to_vec(),
            &labels[px..],
            &[2, 1, side, side],
            3,
        );
        let want_value = v0 / 3.0 + v1 * 2.0 / 3.0;
        assert!(
            (value - want_value).abs() <= 1e-5 * want_value.abs(),
            "loss {value} vs {want_value}"
        );
        let (g0, g1) = (flat_grads(&model, &g0), flat_grads(&model, &g1));
        assert_eq!(got.len(), g0.len());
        // Training runs three of the four deep-supervision heads (nnU-Net gives the fourth
        // weight 0); only the fourth head's parameters have no gradient, in every computation.
        // That head (a 1x1 convolution: weight and bias) is the model's last module.
        let missing =
            |g: &[Vec<f32>]| -> Vec<usize> { (0..g.len()).filter(|&i| g[i].is_empty()).collect() };
        let last_two = vec![got.len() - 2, got.len() - 1];
        assert_eq!(missing(&got), last_two);
        assert_eq!(missing(&g0), last_two);
        assert_eq!(missing(&g1), last_two);
        let (mut err, mut scale) = (0.0f64, 0.0f64);
        for ((g, a), b) in got.iter().zip(&g0).zip(&g1) {
            for ((&g, &a), &b) in g.iter().zip(a).zip(b) {
                let want = f64::from(a) / 3.0 + f64::from(b) * 2.0 / 3.0;
                err = err.max((f64::from(g) - want).abs());
                scale = scale.max(want.abs());
            }
        }
        assert!(scale > 0.0, "gradients are not all zero");
        assert!(
            err <= 1e-4 * scale,
            "max |diff| {err} vs max |grad| {scale}"
        );
    }
}
