//! CPU operations of the network with their own backward passes: the "same" convolutions, the
//! decoders' transposed convolutions and the fused instance norm (their host transfers are `vision_ssm::host`'s, which the scan uses).

pub mod conv;
pub mod norm;
pub mod stats;
#[cfg(test)]
mod testing;
pub mod upconv;
