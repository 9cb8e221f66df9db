/* The dense layer's work outside the GEMMs (which go through BLAS from _core.pyx): the fused
 * bias + activation epilogue of the forward pass and the bias gradient of the backward pass. */
#include "fastnn.h"

/* z += bias (broadcast over rows), then y = act(z). y may alias z when the activation's backward
 * pass does not need z. */
void fnn_bias_act_forward(int act, float alpha, float *z, const float *bias, float *y,
                          size_t rows, size_t cols, int n_threads) {
    if (bias) {
        ptrdiff_t r;
        int nt = fnn_threads(rows * cols, n_threads);
        (void)nt;
        #pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
        for (r = 0; r < (ptrdiff_t)rows; r++) {
            float *zr = z + (size_t)r * cols;
            for (size_t c = 0; c < cols; c++) zr[c] += bias[c];
        }
    }
    fnn_act_forward(act, alpha, z, y, rows, cols, n_threads);
}

/* out[c] = sum over rows of a[r, c], accumulated in row order (same result for any thread
 * count: threads split the columns, never the rows). */
void fnn_column_sum(const float *a, float *out, size_t rows, size_t cols, int n_threads) {
    int nt = fnn_threads(rows * cols, n_threads);
    (void)nt;
    if (nt > 1 && cols >= 64) {
        ptrdiff_t c;
        #pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
        for (c = 0; c < (ptrdiff_t)cols; c++) {
            float s = 0.0f;
            for (size_t r = 0; r < rows; r++) s += a[r * cols + (size_t)c];
            out[c] = s;
        }
        return;
    }
    for (size_t c = 0; c < cols; c++) out[c] = 0.0f;
    for (size_t r = 0; r < rows; r++) {
        const float *ar = a + r * cols;
        for (size_t c = 0; c < cols; c++) out[c] += ar[c];
    }
}
