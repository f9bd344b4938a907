//! The `segmenter` binary: the command line (`cli/`) and the benchmarks (`bench/`) over the
//! `segmenter` library.

mod bench;
mod cli;

use std::process::ExitCode;

// Counts allocated bytes for the benchmarks' peak-memory columns; only this binary has it, not
// the library that other programs link.
#[global_allocator]
static ALLOCATOR: bench::alloc::CountingAlloc = bench::alloc::CountingAlloc;

fn main() -> ExitCode {
    cli::main()
}
