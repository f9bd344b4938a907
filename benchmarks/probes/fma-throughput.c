/* How many 256-bit FMAs per nanosecond one core sustains: ten independent chains, so latency
 * does not limit it. Compare machines before comparing scan benchmarks run on them: a core that
 * splits 256-bit operations into two 128-bit halves (AMD Zen 1) sustains half the rate of one
 * that does not, at the same clock.
 *
 *   gcc -O2 -mavx2 -mfma benchmarks/probes/fma-throughput.c -o /tmp/fma && /tmp/fma
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

int main(void) {
    __m256 x[10];
    for (int i = 0; i < 10; i++) x[i] = _mm256_set1_ps(1.0f + 0.1f * (float)i);
    const __m256 m = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
    const long n = 100000000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        x[0] = _mm256_fmadd_ps(x[0], m, c); x[1] = _mm256_fmadd_ps(x[1], m, c);
        x[2] = _mm256_fmadd_ps(x[2], m, c); x[3] = _mm256_fmadd_ps(x[3], m, c);
        x[4] = _mm256_fmadd_ps(x[4], m, c); x[5] = _mm256_fmadd_ps(x[5], m, c);
        x[6] = _mm256_fmadd_ps(x[6], m, c); x[7] = _mm256_fmadd_ps(x[7], m, c);
        x[8] = _mm256_fmadd_ps(x[8], m, c); x[9] = _mm256_fmadd_ps(x[9], m, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    __m256 sum = x[0];
    for (int i = 1; i < 10; i++) sum = _mm256_add_ps(sum, x[i]);
    float out[8];
    _mm256_storeu_ps(out, sum);
    printf("%.2f 256-bit FMA per ns (checksum %g)\n", (double)n * 10.0 / s / 1e9, (double)out[0]);
    return 0;
}
