//! Times gemm 0.19 (the GEMM under Flex and our host ops) on one convolution's or linear layer's
//! products in each orientation it can be called with, best of 7 × 5 calls, one thread.
use std::time::Instant;
// dst (m×n) = lhs (m×q) · rhs (q×n), strides (rs, cs)
fn mm(dst: &mut [f32], dst_rs: isize, dst_cs: isize, m: usize, n: usize, q: usize, l: &[f32], lrs: isize, lcs: isize, r: &[f32], rrs: isize, rcs: isize) {
    unsafe { gemm::gemm(m, n, q, dst.as_mut_ptr(), dst_cs, dst_rs, false, l.as_ptr(), lcs, lrs, r.as_ptr(), rcs, rrs, 0.0, 1.0, false, false, false, gemm::Parallelism::None); }
}
fn time<F: FnMut()>(mut f: F) -> f64 { f(); let mut best = f64::MAX; for _ in 0..7 { let t = Instant::now(); for _ in 0..5 { f(); } best = best.min(t.elapsed().as_secs_f64() / 5.0); } best }
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    if args.len() == 4 {
        // linear: dW (din×dout) = xᵀ (din×n) · dy (n×dout); x is n×din, dy n×dout row-major
        let (din, dout, n) = (args[0], args[1], args[2]);
        let x = vec![0.5f32; n * din];
        let dy = vec![0.25f32; n * dout];
        let mut dw = vec![0.0f32; din * dout];
        let fl = 2.0 * (din * dout * n) as f64;
        let t = time(|| mm(&mut dw, dout as isize, 1, din, dout, n, &x, 1, din as isize, &dy, dout as isize, 1));
        println!("lin dW row-major dst {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
        let t = time(|| mm(&mut dw, 1, din as isize, din, dout, n, &x, 1, din as isize, &dy, dout as isize, 1));
        println!("lin dW col-major dst {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
        let mut dx = vec![0.0f32; n * din];
        let w = vec![0.1f32; din * dout];
        let t = time(|| mm(&mut dx, din as isize, 1, n, din, dout, &dy, dout as isize, 1, &w, 1, dout as isize));
        println!("lin dx row-major dst {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
        let t = time(|| mm(&mut dx, 1, n as isize, n, din, dout, &dy, dout as isize, 1, &w, 1, dout as isize));
        println!("lin dx col-major dst {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
        return;
    }
    let (cout, taps, n) = (args[0], args[1], args[2]);
    let dy = vec![0.5f32; cout * n];
    let col = vec![0.25f32; taps * n];
    let w = vec![0.1f32; cout * taps];
    let mut dw = vec![0.0f32; cout * taps];
    let mut dcol = vec![0.0f32; taps * n];
    let fl = 2.0 * (cout * taps * n) as f64;
    // dW (cout×taps, row-major) = dY (cout×n) · colᵀ (n×taps); col is taps×n row-major
    let t = time(|| mm(&mut dw, taps as isize, 1, cout, taps, n, &dy, n as isize, 1, &col, 1, n as isize));
    println!("dW   row-major dst      {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    // dWᵀ (taps×cout) col-major = same numbers, dst col-major
    let t = time(|| mm(&mut dw, 1, cout as isize, cout, taps, n, &dy, n as isize, 1, &col, 1, n as isize));
    println!("dW   col-major dst      {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    // dcol (taps×n) = Wᵀ (taps×cout) · dY (cout×n)
    let t = time(|| mm(&mut dcol, n as isize, 1, taps, n, cout, &w, 1, taps as isize, &dy, n as isize, 1));
    println!("dcol row-major dst      {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    // dcol with W pre-transposed (taps×cout row-major)
    let wt = vec![0.1f32; cout * taps];
    let t = time(|| mm(&mut dcol, n as isize, 1, taps, n, cout, &wt, cout as isize, 1, &dy, n as isize, 1));
    println!("dcol row-major, Wt      {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    // forward: y (cout×n) = W (cout×taps) · col (taps×n)
    let mut y = vec![0.0f32; cout * n];
    let t = time(|| mm(&mut y, n as isize, 1, cout, n, taps, &w, taps as isize, 1, &col, n as isize, 1));
    println!("fwd  y=W·col            {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    // the same three with the transposed problem (dstᵀ = rhsᵀ·lhsᵀ), dst memory unchanged
    let t = time(|| mm(&mut dw, 1, taps as isize, taps, cout, n, &col, n as isize, 1, &dy, 1, n as isize));
    println!("dW   transposed problem {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    let t = time(|| mm(&mut dcol, 1, n as isize, n, taps, cout, &dy, 1, n as isize, &w, taps as isize, 1));
    println!("dcol transposed problem {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    let t = time(|| mm(&mut y, 1, n as isize, n, cout, taps, &col, 1, n as isize, &w, 1, taps as isize));
    println!("fwd  transposed problem {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    let t = time(|| mm(&mut y, 1, cout as isize, cout, n, taps, &w, taps as isize, 1, &col, n as isize, 1));
    println!("fwd  y col-major dst    {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    let t = time(|| mm(&mut y, 1, cout as isize, cout, n, taps, &w, taps as isize, 1, &col, 1, taps as isize));
    println!("fwd  y col-maj, colT    {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    let t = time(|| mm(&mut y, n as isize, 1, cout, n, taps, &w, taps as isize, 1, &col, 1, taps as isize));
    println!("fwd  y row-maj, colT    {:8.3} ms {:6.1} GFLOPS", t * 1e3, fl / t / 1e9);
    // memcpy of col as yardstick
    let mut c2 = vec![0.0f32; taps * n];
    let t = time(|| c2.copy_from_slice(&col));
    println!("copy col                {:8.3} ms", t * 1e3);
}
