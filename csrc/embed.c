/* Embedding: the row gather (forward) and its sparse gradient (backward). Indices are int32 or
 * int64 (`wide`), read through one accessor. Callers check the range first
 * (fnn_embedding_first_bad):
 * nothing here reads or writes outside the table. */
#include <string.h>
#include "fastnn.h"

static inline int64_t id_at(const void *ids, int wide, size_t i) {
    return wide ? ((const int64_t *)ids)[i] : (int64_t)((const int32_t *)ids)[i];
}

/* The position of the first index outside [0, rows), or -1 when all are in range. A plain
 * scan: it is a few thousand indices per batch, and the first bad one is reported. */
int64_t fnn_embedding_first_bad(const void *ids, int wide, size_t n, int64_t rows) {
    for (size_t i = 0; i < n; i++) {
        int64_t r = id_at(ids, wide, i);
        if (r < 0 || r >= rows) return (int64_t)i;
    }
    return -1;
}

/* out[i, :] = table[ids[i], :], parallel over the rows gathered. */
void fnn_embedding_forward(const float *table, const void *ids, int wide, size_t n, size_t dim,
                           float *out, int n_threads) {
    int nt = fnn_threads(n * dim, n_threads);
    ptrdiff_t i, len = (ptrdiff_t)n;
    (void)nt;
    FNN_PARALLEL_FOR(schedule(static),
        for (i = 0; i < len; i++)
            memcpy(out + (size_t)i * dim, table + (size_t)id_at(ids, wide, (size_t)i) * dim,
                   sizeof(float) * dim););
}

/* d_table[ids[i], :] += dy[i, :] for every i, after zeroing the rows listed in `clear` (or the
 * whole table when clear is NULL). Thread t owns the rows r with r % nt == t and adds its rows'
 * gradients in the order of i, so every row's sum is the same for any thread count, and no two
 * threads write one row. Only the rows used (and the ones cleared) are touched. */
void fnn_embedding_backward(const void *ids, int wide, size_t n, const float *dy, size_t dim,
                            float *d_table, size_t rows, const void *clear, int clear_wide,
                            size_t n_clear, int n_threads) {
    int nt = fnn_threads((n + (clear ? n_clear : rows)) * dim, n_threads);
    ptrdiff_t t;
    FNN_PARALLEL_FOR(schedule(static),
        for (t = 0; t < nt; t++) {
            if (clear == NULL)
                for (size_t r = (size_t)t; r < rows; r += (size_t)nt)
                    memset(d_table + r * dim, 0, sizeof(float) * dim);
            for (size_t j = 0; clear != NULL && j < n_clear; j++) {
                int64_t r = id_at(clear, clear_wide, j);
                if (r % nt == t) memset(d_table + (size_t)r * dim, 0, sizeof(float) * dim);
            }
            for (size_t i = 0; i < n; i++) {
                int64_t r = id_at(ids, wide, i);
                if (r % nt != t) continue;
                float *restrict row = d_table + (size_t)r * dim;
                const float *restrict g = dy + i * dim;
                for (size_t k = 0; k < dim; k++) row[k] += g[k];
            }
        });
}
