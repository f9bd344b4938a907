//! The network's hyper-parameters: the `[model]` table of a config.

use serde::{Deserialize, Serialize};

/// Total downsampling of the network: inputs must have sides divisible by this.
pub const DOWNSAMPLING: usize = 32;

/// Which mixer the encoder stages use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// VSS blocks (selective scan): Swin-UMamba.
    #[default]
    Vss,
    /// Residual convolution blocks of similar size, for ablations.
    Conv,
}

/// Architecture hyper-parameters of [`SwinUMamba`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Channels of the 7×7 stem (and of the two highest-resolution skips).
    pub stem_channels: usize,
    /// Channels of the four encoder stages (each twice the previous).
    pub dims: [usize; 4],
    /// Number of blocks in each stage.
    pub depths: [usize; 4],
    /// State size N of the selective scan.
    pub d_state: usize,
    /// Inner expansion of SS2D.
    pub expand: usize,
    /// VSS (default) or convolutional encoder blocks.
    #[serde(default)]
    pub encoder: EncoderKind,
    /// Neighbouring slices on each side given to the network with each slice as extra input
    /// channels (2.5D); 0 (default): the slice alone. Recorded in the run's plan for inference.
    #[serde(default)]
    pub context_slices: usize,
    /// 2 (default): a 2D network over slices; 3: a volumetric network over 3D patches.
    #[serde(default = "default_spatial_dims")]
    pub spatial_dims: usize,
    /// Scan directions of each VSS3D block (3D only): 6 (the three axis orders, each forward and
    /// reversed; default), 4 or 2 (the first two orders, or the first).
    #[serde(default = "default_directions")]
    pub directions: usize,
}

fn default_spatial_dims() -> usize {
    2
}

fn default_directions() -> usize {
    6
}

/// Most neighbouring slices a side `context_slices` may ask for: more is a 3D problem.
pub const MAX_CONTEXT_SLICES: usize = 8;

impl ModelConfig {
    /// A network of VSS stages with these widths, depths and state size (expand 2, one slice).
    pub fn vss(stem_channels: usize, dims: [usize; 4], depths: [usize; 4], d_state: usize) -> Self {
        Self {
            stem_channels,
            dims,
            depths,
            d_state,
            expand: 2,
            encoder: EncoderKind::Vss,
            context_slices: 0,
            spatial_dims: 2,
            directions: 6,
        }
    }

    /// Whether this is the volumetric network.
    pub fn is_3d(&self) -> bool {
        self.spatial_dims == 3
    }

    /// Checks that the stage widths double (patch merging doubles the channels).
    pub fn validate(&self) -> Result<(), String> {
        for i in 1..4 {
            if self.dims[i] != 2 * self.dims[i - 1] {
                return Err(format!(
                    "model dims must double from stage to stage, got {:?}",
                    self.dims
                ));
            }
        }
        if self.depths.contains(&0) || self.stem_channels == 0 || self.d_state == 0 {
            return Err("model depths, stem_channels and d_state must be positive".into());
        }
        if self.spatial_dims != 2 && self.spatial_dims != 3 {
            return Err(format!(
                "model.spatial_dims must be 2 or 3, got {}",
                self.spatial_dims
            ));
        }
        if ![2, 4, 6].contains(&self.directions) {
            return Err(format!(
                "model.directions must be 2, 4 or 6, got {}",
                self.directions
            ));
        }
        if self.is_3d() && self.context_slices > 0 {
            return Err(
                "model.context_slices (2.5D) is for 2D networks; a 3D network sees the neighbouring slices itself"
                    .into(),
            );
        }
        if self.context_slices > MAX_CONTEXT_SLICES {
            return Err(format!(
                "model.context_slices must be at most {MAX_CONTEXT_SLICES}, got {}",
                self.context_slices
            ));
        }
        Ok(())
    }
}
