#!/usr/bin/env python3
"""Which 256-bit vector instructions compete with FMA for the same execution ports on this CPU.

The fused scan's exponential mixes FMAs with max/min, round, convert, integer add and shift. Each
row below times 6 independent instructions of one kind alone, then together with 8 independent
FMAs, in an asm loop (cycles assume the clock the integer-add line measures). If the pair costs
about the larger of the two, the instruction runs beside the FMAs; if about the sum, it takes the
FMA ports. Needs gcc on x86-64 with AVX2 and FMA.

    python3 benchmarks/probes/fp-pipes.py
"""
import os
import subprocess
import sys
import tempfile

OPS = {
    "vaddps": "vaddps %%ymm15, %%ymm{r}, %%ymm{r}",
    "vmulps": "vmulps %%ymm15, %%ymm{r}, %%ymm{r}",
    "vmaxps": "vmaxps %%ymm15, %%ymm{r}, %%ymm{r}",
    "vroundps": "vroundps $8, %%ymm{r}, %%ymm{r}",
    "vcvtps2dq": "vcvtps2dq %%ymm{r}, %%ymm{r}",
    "vpaddd": "vpaddd %%ymm15, %%ymm{r}, %%ymm{r}",
    "vpslld": "vpslld $1, %%ymm{r}, %%ymm{r}",
    "vandps": "vandps %%ymm15, %%ymm{r}, %%ymm{r}",
    "vblendvps": "vblendvps %%ymm14, %%ymm15, %%ymm{r}, %%ymm{r}",
    "vbroadcastss": "vbroadcastss (%%rsp), %%ymm{r}",
}
FMA8 = "".join(f"vfmadd213ps %%ymm15, %%ymm15, %%ymm{r}\\n" for r in range(8))

HEAD = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec a; clock_gettime(CLOCK_MONOTONIC, &a); return a.tv_sec + a.tv_nsec * 1e-9; }
#define N 20000000L
static double ghz;
#define RUN(name, BODY) { double t = now(); long n = N; \
  __asm__ volatile("vxorps %%ymm15,%%ymm15,%%ymm15\n vxorps %%ymm14,%%ymm14,%%ymm14\n 1:\n" BODY "dec %0\n jnz 1b\n" \
    : "+r"(n) :: "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15"); \
  t = now() - t; printf("%-24s %6.2f cycles per loop\n", name, t / N * ghz * 1e9); }
int main(void) {
  { long n = 200000000; double t = now(); long x = 0;
    for (long i = 0; i < n; i++) __asm__ volatile("add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0" : "+r"(x));
    t = now() - t; ghz = n * 4.0 / t / 1e9; printf("clock (dependent integer adds): %.2f GHz\n", ghz); }
"""


def main() -> int:
    body = [HEAD, f'RUN("8 vfmadd213ps", "{FMA8}")\n']
    for name, pat in OPS.items():
        six = "".join(pat.format(r=r) + "\\n" for r in range(8, 14))
        body.append(f'RUN("6 {name}", "{six}")\n')
        body.append(f'RUN("6 {name} + 8 fma", "{six}{FMA8}")\n')
    body.append("return 0; }\n")
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "pipes.c"), os.path.join(d, "pipes")
        with open(src, "w") as f:
            f.write("".join(body))
        subprocess.run(["gcc", "-O2", src, "-o", exe], check=True)
        return subprocess.run([exe]).returncode


if __name__ == "__main__":
    sys.exit(main())
