//! One value for each of the scan's seven inputs: the inputs themselves (as host slices,
//! backend tensors or float64 copies) or their gradients, always named and ordered alike.

/// Names of the scan's seven inputs, in the order of [`ScanArgs::into_array`].
pub const INPUT_NAMES: [&str; 7] = ["u", "delta", "a", "bm", "cm", "d_skip", "delta_bias"];

/// One value per input of the scan (shapes as in the [`super`] module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScanArgs<T> {
    /// `[B, D, L]` input sequence.
    pub u: T,
    /// `[B, D, L]` step size before bias and softplus.
    pub delta: T,
    /// `[D, N]` state matrix (diagonal per channel; negative for stability).
    pub a: T,
    /// `[B, K, N, L]` input projection, shared by the channels of one direction.
    pub bm: T,
    /// `[B, K, N, L]` output projection, shared by the channels of one direction.
    pub cm: T,
    /// `[D]` skip weight.
    pub d_skip: T,
    /// `[D]` step-size bias, added before softplus.
    pub delta_bias: T,
}

impl<T> ScanArgs<T> {
    /// The values from an array in [`INPUT_NAMES`] order.
    pub fn from_array(values: [T; 7]) -> Self {
        let [u, delta, a, bm, cm, d_skip, delta_bias] = values;
        Self {
            u,
            delta,
            a,
            bm,
            cm,
            d_skip,
            delta_bias,
        }
    }

    /// The values in [`INPUT_NAMES`] order.
    pub fn into_array(self) -> [T; 7] {
        [
            self.u,
            self.delta,
            self.a,
            self.bm,
            self.cm,
            self.d_skip,
            self.delta_bias,
        ]
    }

    /// The values by reference.
    pub fn each_ref(&self) -> ScanArgs<&T> {
        let ScanArgs {
            u,
            delta,
            a,
            bm,
            cm,
            d_skip,
            delta_bias,
        } = self;
        ScanArgs::from_array([u, delta, a, bm, cm, d_skip, delta_bias])
    }

    /// `f` of every value, applied in [`INPUT_NAMES`] order.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> ScanArgs<U> {
        ScanArgs::from_array(self.into_array().map(f))
    }
}

impl<'a> ScanArgs<&'a [f32]> {
    /// Borrows seven row-major arrays given in [`INPUT_NAMES`] order.
    pub fn borrowed<V: AsRef<[f32]>>(values: &'a [V; 7]) -> Self {
        ScanArgs::from_array(values.each_ref().map(|v| v.as_ref()))
    }
}
