/* STREAM-style triad, a[i] = b[i] + s * c[i], over arrays far larger than any cache.
 * Prints the best bandwidth over several passes in GB/s, counting 24 bytes per element
 * (two reads, one write) as STREAM does. Threads: OMP_NUM_THREADS. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const long n = argc > 1 ? atol(argv[1]) : 40L * 1000 * 1000; /* 3 x 320 MB */
    const int passes = argc > 2 ? atoi(argv[2]) : 10;
    double *a = malloc(n * sizeof(double)), *b = malloc(n * sizeof(double)), *c = malloc(n * sizeof(double));
    if (!a || !b || !c) return 1;
#pragma omp parallel for
    for (long i = 0; i < n; i++) { a[i] = 0.0; b[i] = 1.0; c[i] = 2.0; } /* first touch, per thread */
    double best = 0.0;
    for (int p = 0; p < passes; p++) {
        double t0 = omp_get_wtime();
#pragma omp parallel for
        for (long i = 0; i < n; i++) a[i] = b[i] + 3.0 * c[i];
        double seconds = omp_get_wtime() - t0;
        double rate = 24.0 * n / seconds / 1e9;
        if (rate > best) best = rate;
    }
    printf("%.3f\n", best);
    return a[n / 2] == 7.0 ? 0 : 2; /* keeps the loop from being optimised away */
}
