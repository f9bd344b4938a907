//! CPU operations of the network with their own backward passes: the "same" convolutions and
//! the fused instance norm, and the host transfer they share.

pub mod conv;
pub mod host;
pub mod norm;
pub mod stats;
