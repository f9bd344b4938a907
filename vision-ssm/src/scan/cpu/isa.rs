//! Instruction-set detection and dispatch: the kernels are compiled once per instruction set
//! and picked at run time, because the workspace builds for baseline x86-64.

/// Instruction set the hot loops run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// Portable code for whatever the build target allows (SSE2 on x86-64), no FMA.
    Base,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F with FMA.
    Avx512,
}

impl Isa {
    /// The best instruction set this machine supports.
    pub(super) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::Avx512::detect().is_some() {
                return Isa::Avx512;
            }
            if super::x86::Avx2::detect().is_some() {
                return Isa::Avx2;
            }
        }
        Isa::Base
    }

    /// Every instruction set usable here (tests run all of them).
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        match Isa::detect() {
            Isa::Base => vec![Isa::Base],
            Isa::Avx2 => vec![Isa::Base, Isa::Avx2],
            Isa::Avx512 => vec![Isa::Base, Isa::Avx2, Isa::Avx512],
        }
    }
}

/// Calls `$body::<S, NB>(s, args..)` for the state block size `$nb` (a power of two up to 16).
macro_rules! by_block {
    ($nb:expr, $body:ident ($s:expr $(, $arg:expr)*)) => {
        match $nb {
            1 => $body::<_, 1>($s $(, $arg)*),
            2 => $body::<_, 2>($s $(, $arg)*),
            4 => $body::<_, 4>($s $(, $arg)*),
            8 => $body::<_, 8>($s $(, $arg)*),
            16 => $body::<_, 16>($s $(, $arg)*),
            nb => unreachable!("state block {nb} is not a power of two up to 16"),
        }
    };
}

/// Defines `$name(isa, layout, args..)`, which runs `$body::<S, NB>` with the vectors of the
/// instruction set, compiled for it, and the state block of `layout` as a constant.
macro_rules! isa_dispatch {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        fn $name(
            isa: $crate::scan::cpu::isa::Isa,
            layout: $crate::scan::cpu::layout::Layout,
            $($arg: $ty),*
        ) {
            use $crate::scan::cpu::isa::{by_block, Isa};
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::scan::cpu::x86::{Avx2, Avx512};
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512(s: Avx512, nb: usize, $($arg: $ty),*) {
                    by_block!(nb, $body(s $(, $arg)*))
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2(s: Avx2, nb: usize, $($arg: $ty),*) {
                    by_block!(nb, $body(s $(, $arg)*))
                }
                match isa {
                    Isa::Avx512 => {
                        let s = Avx512::detect().expect("Isa::Avx512 is only chosen where the CPU has it");
                        // SAFETY: the token proves the CPU has the features `avx512` is compiled for.
                        return unsafe { avx512(s, layout.nb, $($arg),*) };
                    }
                    Isa::Avx2 => {
                        let s = Avx2::detect().expect("Isa::Avx2 is only chosen where the CPU has it");
                        // SAFETY: as above.
                        return unsafe { avx2(s, layout.nb, $($arg),*) };
                    }
                    Isa::Base => {}
                }
            }
            let _ = isa;
            by_block!(layout.nb, $body($crate::scan::cpu::portable::Portable $(, $arg)*))
        }
    };
}

pub(super) use {by_block, isa_dispatch};
