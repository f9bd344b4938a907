/* The fused scan's forward inner loop (AVX2 path: 8 channel lanes, a block of 8 state rows, one
 * block of 64 steps held in L1), alone, to see what one CPU does with it: time per state row and
 * step. With -DCHEAP_EXP the 13-instruction exponential is replaced by one FMA (wrong values,
 * timing only), which shows what share of the loop the exponential is.
 *
 *   gcc -O3 -mavx2 -mfma benchmarks/probes/scan-inner-loop.c -o /tmp/loop && /tmp/loop
 *   gcc -O3 -mavx2 -mfma -DCHEAP_EXP benchmarks/probes/scan-inner-loop.c -o /tmp/loop-cheap && /tmp/loop-cheap
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define NB 8
#define M 64

static inline __m256 exp2v(__m256 t) {
#ifdef CHEAP_EXP
    return _mm256_fmadd_ps(t, _mm256_set1_ps(0.01f), _mm256_set1_ps(0.9f));
#else
    /* As vision-ssm's vexp2: clamp, split into integer and fraction, degree-5 polynomial. */
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-126.f)), _mm256_set1_ps(127.f));
    __m256 nf = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, nf);
    __m256 p = _mm256_fmadd_ps(f, _mm256_set1_ps(0.0013390863f), _mm256_set1_ps(0.009676032f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.05550357f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.24022107f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.6931472f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0000001f));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(nf), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
#endif
}

static float B[M][16] __attribute__((aligned(32))), C[M][16] __attribute__((aligned(32)));
static __m256 D[M], DU[M], Y[M], A2[NB];

int main(void) {
    for (int t = 0; t < M; t++) {
        for (int i = 0; i < 16; i++) {
            B[t][i] = 0.01f * (float)(t + i);
            C[t][i] = 0.02f * (float)(t - i);
        }
        D[t] = _mm256_set1_ps(0.01f + 0.001f * (float)t);
        DU[t] = _mm256_set1_ps(0.3f);
        Y[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < NB; i++) A2[i] = _mm256_set1_ps(-1.44f * (float)(i + 1));
    __m256 h[NB];
    for (int i = 0; i < NB; i++) h[i] = _mm256_setzero_ps();
    const long reps = 200000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long r = 0; r < reps; r++) {
        for (int t = 0; t < M; t++) {
            __m256 d = D[t], du = DU[t], acc = _mm256_setzero_ps();
#pragma GCC unroll 8
            for (int i = 0; i < NB; i++) {
                __m256 e = exp2v(_mm256_mul_ps(d, A2[i]));
                h[i] = _mm256_fmadd_ps(e, h[i], _mm256_mul_ps(du, _mm256_broadcast_ss(&B[t][i])));
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&C[t][i]), h[i], acc);
            }
            Y[t] = _mm256_add_ps(Y[t], acc);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    float out[8];
    _mm256_storeu_ps(out, Y[3]);
    printf("%.2f ns per state row and step, 8 lanes (checksum %g)\n",
           s / ((double)reps * M * NB) * 1e9, (double)out[0]);
    return 0;
}
