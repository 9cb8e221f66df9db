/* The dense layer's work outside the GEMMs (which go through BLAS from _core.pyx): the fused
 * bias + activation epilogue of the forward pass and the bias gradient of the backward pass. */
#include "fastnn.h"

/* z += bias (broadcast over rows), then y = act(z). y may alias z when the activation's backward
 * pass does not need z. */
FNN_DISPATCH
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
 * count: threads split the columns, never the rows). Each thread streams its column block
 * row by row, so the matrix is read once, in order, however many columns it has. */
#define COLSUM_BLOCK 64

FNN_DISPATCH
void fnn_column_sum(const float *a, float *out, size_t rows, size_t cols, int n_threads) {
    ptrdiff_t blocks = (ptrdiff_t)((cols + COLSUM_BLOCK - 1) / COLSUM_BLOCK), b;
    int nt = blocks > 1 ? fnn_threads(rows * cols, n_threads) : 1;
    (void)nt;
    #pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (b = 0; b < blocks; b++) {
        size_t c0 = (size_t)b * COLSUM_BLOCK;
        size_t width = cols - c0 < COLSUM_BLOCK ? cols - c0 : COLSUM_BLOCK;
        float acc[COLSUM_BLOCK] = {0};
        for (size_t r = 0; r < rows; r++) {
            const float *ar = a + r * cols + c0;
            for (size_t c = 0; c < width; c++) acc[c] += ar[c];
        }
        for (size_t c = 0; c < width; c++) out[c0 + c] = acc[c];
    }
}
