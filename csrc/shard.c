/* One step of a shared arena (fastnn/distribution, _SharedArena) without Python: the ranks of
 * one machine keep the parameters and optimizer slots in one shared-memory window, each with
 * its row of gradients (then a not-finite flag and its scale). A step: each rank writes its
 * row; a barrier; each sums its shard [lo, hi) of the columns over the rows and updates that
 * shard (fnn_optimizer_update); a barrier. A step of a small model takes ~50-100 us, so the
 * barriers are a spin on counters in the window (MPI's barrier and the Python around it cost
 * as much as the step), and a rank that waits checks now and then that its peers are alive:
 * a peer that died ends the wait with an error, never a hang. */
#define _POSIX_C_SOURCE 200809L
#include "fastnn.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#ifndef _WIN32
#include <sched.h>
#include <signal.h>
#include <sys/types.h>
#endif

#if defined(__GNUC__) && !defined(_WIN32)
#define SHARD_SUPPORTED 1
#else
#define SHARD_SUPPORTED 0   /* (no __atomic builtins: the Python path and MPI's barrier) */
#endif

int fnn_shard_supported(void) { return SHARD_SUPPORTED; }

#if SHARD_SUPPORTED

/* How a waiting rank waits: it spins while its peers are likely a few microseconds away,
 * then yields the core (ranks may outnumber cores, other jobs share them), then sleeps (a peer
 * in a long callback must not cost a core); it checks its peers' processes every CHECK_NS.
 * (On 2 cores busy with a third process, the MLP of benchmarks/distributed.py took 0.098 s an
 * epoch spinning 5 us before yielding, 0.122 s spinning 50 us, 0.138 s with MPI's barrier;
 * sleeping after 1 ms rather than 2 ms or 200 us was as fast or faster.) */
#define SPIN_NS 5000LL
#define YIELD_NS 1000000LL
#define SLEEP_NS 50000L
#define CHECK_NS 100000000LL

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int64_t fnn_shard_clock(void) { return now_ns(); }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Whether process pid has ended but not been reaped (a zombie answers kill(pid, 0) as a
 * live process does; mpiexec may reap its ranks late or, its clean-up off, never). */
static int ended(pid_t pid) {
#ifdef __linux__
    char path[48], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *state = strrchr(buf, ')');      /* (the command's name may hold any byte) */
    return state && state[1] == ' ' && (state[2] == 'Z' || state[2] == 'X');
#else
    (void)pid;
    return 0;
#endif
}

/* The first peer whose process is gone, or -1. (A process of another pid namespace is not
 * visible: the caller then passes watch = 0.) */
static int dead_peer(const fnn_shard *sh) {
    const int32_t *pids = (const int32_t *)(sh->control + 2);
    for (int k = 0; k < sh->ranks; k++) {
        pid_t pid = (pid_t)__atomic_load_n(&pids[k], __ATOMIC_RELAXED);
        if (k != sh->rank && pid > 0 &&
                ((kill(pid, 0) != 0 && errno == ESRCH) || ended(pid)))
            return k;
    }
    return -1;
}

int fnn_shard_barrier(fnn_shard *sh) {
    uint32_t *count = sh->control, *generation = sh->control + 1;
    uint32_t g = __atomic_load_n(generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(count, 1, __ATOMIC_ACQ_REL) == (uint32_t)sh->ranks) {
        /* the last to arrive: (the reset is ordered before the release of the others) */
        __atomic_store_n(count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(generation, g + 1, __ATOMIC_RELEASE);
        return 0;
    }
    int64_t start = now_ns(), check = start + CHECK_NS;
    int rc = 0;
    unsigned spins = 0;
    while (__atomic_load_n(generation, __ATOMIC_ACQUIRE) == g) {
        if ((++spins & 63) != 0) {
            cpu_relax();
            continue;
        }
        int64_t t = now_ns();
        if (t - start < SPIN_NS) continue;
        if (sh->watch && t >= check) {
            int k = dead_peer(sh);
            if (k >= 0) {
                sh->dead = k;
                rc = -1;
                break;
            }
            check = t + CHECK_NS;
        }
        if (t - start < YIELD_NS) {
            sched_yield();
        } else {
            struct timespec pause = {0, SLEEP_NS};
            nanosleep(&pause, NULL);
        }
    }
    sh->waited += (double)(now_ns() - start) * 1e-9;
    return rc;
}

/* out (this rank's row over the shard) becomes the sum of every rank's row times its scale
 * there, in _SharedArena._add_others's order and roundings (the ranks' bits, and those of the
 * Python path): this rank's first, then the others in rank order; with one scale for all,
 * one multiply of the sum. (At the vector width NumPy's sums run: each value is the same.) */
FNN_DISPATCH
static void add_others(const fnn_shard *sh, size_t lo, size_t hi) {
    size_t width = sh->stride, len = hi - lo;
    const float *rows = sh->rows;
    float *restrict out = sh->rows + (size_t)sh->rank * width + lo;
    float first = rows[sh->n + 1];
    int same = 1;
    for (int k = 1; k < sh->ranks; k++) same &= rows[k * width + sh->n + 1] == first;
    float mine = rows[sh->rank * width + sh->n + 1];
    if (!same && mine != 1.0f)
        for (size_t i = 0; i < len; i++) out[i] *= mine;
    for (int k = 0; k < sh->ranks; k++) {
        if (k == sh->rank) continue;
        const float *restrict other = rows + k * width + lo;
        float scale = rows[k * width + sh->n + 1];
        if (same) {
            for (size_t i = 0; i < len; i++) out[i] += other[i];
        } else {
            for (size_t i = 0; i < len; i++) out[i] += other[i] * scale;
        }
    }
    if (same && first != 1.0f)
        for (size_t i = 0; i < len; i++) out[i] *= first;
}

/* Whether every rank's count is a row count of its region (every rank reads the same counts
 * after the barrier, so all return alike). */
static int counts_fit(const fnn_shard *sh, const fnn_shard_outer *o) {
    for (int k = 0; k < sh->ranks; k++)
        if (!(o->count[k] >= 0.0f && o->count[k] <= (float)o->max_rows)) return 0;
    return 1;
}

static float scale_of(const fnn_shard *sh, int k) {
    return sh->rows[(size_t)k * sh->stride + sh->n + 1];
}

/* The ranks [k, *end) whose rows lie back to back in an outer kernel's regions (each before
 * the last holds its region's max_rows) and, with by_scale, share one scale: one GEMM takes
 * them all (one packing of the kernel's operand instead of one a rank). Returns their rows. */
static int next_run(const fnn_shard *sh, const fnn_shard_outer *o, int k, int by_scale,
                    int *end) {
    int rows = 0, j = k;
    while (j < sh->ranks) {
        int n = (int)o->count[j];
        if (by_scale && j > k && scale_of(sh, j) != scale_of(sh, k)) break;
        rows += n;
        j++;
        if (n < o->max_rows) break;     /* the next rank's rows do not follow on */
    }
    *end = j;
    return rows;
}

/* Rows [r0, r1) of an outer kernel's gradient (d_out wide, ldc apart from c on), from the
 * ranks' rows in rank order. */
static void outer_rows(const fnn_shard *sh, const fnn_shard_outer *o, int r0, int r1, float *c,
                       int n_threads) {
    float beta = 0.0f;
    for (int k = 0, end; k < sh->ranks; k = end) {
        int rows = next_run(sh, o, k, 1, &end);
        if (rows <= 0) continue;
        const float *x = o->x + (size_t)k * o->max_rows * o->d_in;
        const float *dz = o->dz + (size_t)k * o->max_rows * o->d_out;
        fnn_gemm(1, 0, r1 - r0, o->d_out, rows, scale_of(sh, k), x + r0, o->d_in, dz, o->d_out,
                 beta, c, o->d_out, n_threads);
        beta = 1.0f;
    }
    if (beta == 0.0f) memset(c, 0, (size_t)(r1 - r0) * o->d_out * sizeof(float));
}

/* The outer kernel's weights [a, b) of the arena (in this rank's shard) into this rank's row:
 * whole rows straight there, a row cut by the shard's edge through o->part. */
static void outer_part(const fnn_shard *sh, const fnn_shard_outer *o, size_t a, size_t b,
                       int n_threads) {
    float *row = sh->rows + (size_t)sh->rank * sh->stride;
    size_t cols = (size_t)o->d_out, first = (a - o->at) / cols, last = (b - o->at - 1) / cols;
    size_t full0 = (a - o->at + cols - 1) / cols, full1 = (b - o->at) / cols;
    if (full1 > full0)
        outer_rows(sh, o, (int)full0, (int)full1, row + o->at + full0 * cols, n_threads);
    for (size_t r = first; r <= last; r++) {
        if (r >= full0 && r < full1) continue;
        size_t r_at = o->at + r * cols;
        size_t c0 = a > r_at ? a - r_at : 0, c1 = b < r_at + cols ? b - r_at : cols;
        outer_rows(sh, o, (int)r, (int)r + 1, o->part, 1);
        memcpy(row + r_at + c0, o->part + c0, (c1 - c0) * sizeof(float));
    }
}

/* This rank's shard summed over the ranks' rows, the outer kernels' parts computed instead. */
static void sum_shard(fnn_shard *sh, int n_threads) {
    size_t at = sh->lo;
    for (int i = 0; i < sh->n_outer; i++) {
        const fnn_shard_outer *o = &sh->outer[i];
        size_t a = o->at > at ? o->at : at;
        size_t end = o->at + (size_t)o->d_in * o->d_out, b = end < sh->hi ? end : sh->hi;
        if (a >= b) continue;
        if (a > at) add_others(sh, at, a);
        outer_part(sh, o, a, b, n_threads);
        at = b;
    }
    if (sh->hi > at) add_others(sh, at, sh->hi);
}

static int reduce(fnn_shard *sh, float scale, int bad, int n_threads);

int fnn_shard_reduce(fnn_shard *sh, float scale, int bad, int n_threads) {
    int64_t start = now_ns();
    int rc = reduce(sh, scale, bad, n_threads);
    sh->seconds += (double)(now_ns() - start) * 1e-9;
    return rc;
}

static int reduce(fnn_shard *sh, float scale, int bad, int n_threads) {
    float *row = sh->rows + (size_t)sh->rank * sh->stride;
    row[sh->n] = bad ? 1.0f : 0.0f;
    row[sh->n + 1] = scale;
    if (fnn_shard_barrier(sh) != 0) return -1;      /* every rank's row is written */
    for (int i = 0; i < sh->n_outer; i++)
        if (!counts_fit(sh, &sh->outer[i])) return -3;
    for (int k = 0; k < sh->ranks; k++) {
        if (sh->rows[(size_t)k * sh->stride + sh->n] != 0.0f) {
            /* (no rank writes its row again before every rank has read the flags) */
            return fnn_shard_barrier(sh) != 0 ? -1 : 1;
        }
    }
    sum_shard(sh, n_threads);
    return 0;
}

int fnn_shard_update(fnn_shard *sh, const float *scalars, int n_threads) {
    int64_t start = now_ns();
    size_t len = sh->hi - sh->lo;
    if (len > 0) {
        float *slots[FNN_OPT_SLOTS];
        for (int j = 0; j < FNN_OPT_SLOTS; j++)
            slots[j] = sh->slots[j] ? sh->slots[j] + sh->lo : NULL;
        fnn_optimizer_update(sh->kind, sh->params + sh->lo,
                             sh->rows + (size_t)sh->rank * sh->stride + sh->lo, slots, &len, 1,
                             scalars, sh->clip_mode, sh->clip_limit, n_threads);
    }
    int rc = fnn_shard_barrier(sh);     /* every shard updated before the next forward pass */
    sh->seconds += (double)(now_ns() - start) * 1e-9;
    return rc;
}

int fnn_shard_step(fnn_shard *sh, const float *scalars, int n_threads) {
    float *flag = sh->rows + (size_t)sh->rank * sh->stride + sh->n;
    int rc = fnn_shard_reduce(sh, 1.0f, *flag != 0.0f, n_threads);
    if (rc < 0) return -1;
    if (rc == 1) {      /* a rank's loss was not finite: the stack sees the flag, no step */
        *flag = 1.0f;
        return 0;
    }
    return fnn_shard_update(sh, scalars, n_threads) != 0 ? -1 : 1;
}

/* Kernel rows [*r0, *r1) of this rank in the split passes: those whose first weight lies in
 * its shard [lo, hi) (the next rank's lo is this one's hi: the ranks' rows tile the kernel). */
static void split_rows(const fnn_shard *sh, const fnn_shard_outer *o, size_t *r0, size_t *r1) {
    size_t cols = (size_t)o->d_out, rows = (size_t)o->d_in;
    size_t a = sh->lo > o->at ? sh->lo - o->at : 0, b = sh->hi > o->at ? sh->hi - o->at : 0;
    a = (a + cols - 1) / cols;
    b = (b + cols - 1) / cols;
    *r0 = a < rows ? a : rows;
    *r1 = b < rows ? b : rows;
}

/* A barrier whose time counts in `seconds` (the split passes' communication). */
static int split_barrier(fnn_shard *sh) {
    int64_t start = now_ns();
    int rc = fnn_shard_barrier(sh);
    sh->seconds += (double)(now_ns() - start) * 1e-9;
    return rc;
}

int fnn_shard_split_forward(fnn_shard *sh, int i, float *z, int n_threads) {
    const fnn_shard_outer *o = &sh->outer[i];
    size_t cols = (size_t)o->d_out, rows = (size_t)o->max_rows, r0, r1;
    size_t block = rows * cols, part = (size_t)sh->ranks * block;
    const float *w = sh->params + o->at;
    if (split_barrier(sh) != 0) return -1;      /* every rank's rows and count are written */
    if (!counts_fit(sh, o)) return -3;
    split_rows(sh, o, &r0, &r1);
    float *mine = o->z_parts + (size_t)sh->rank * part;
    for (int k = 0, end; k < sh->ranks; k = end) {
        int n = next_run(sh, o, k, 0, &end);
        if (n <= 0) continue;
        float *c = mine + (size_t)k * block;
        if (r1 > r0)
            fnn_gemm(0, 0, n, (int)cols, (int)(r1 - r0), 1.0f,
                     o->x + (size_t)k * rows * o->d_in + r0, o->d_in, w + r0 * cols, (int)cols,
                     0.0f, c, (int)cols, n_threads);
        else
            memset(c, 0, (size_t)n * cols * sizeof(float));
    }
    if (split_barrier(sh) != 0) return -1;      /* every rank's partial products are written */
    size_t len = (size_t)o->count[sh->rank] * cols;
    for (int p = 0; p < sh->ranks && len > 0; p++) {
        const float *restrict from = o->z_parts + (size_t)p * part + (size_t)sh->rank * block;
        if (p == 0) {
            memcpy(z, from, len * sizeof(float));
        } else {
            for (size_t j = 0; j < len; j++) z[j] += from[j];
        }
    }
    return 0;
}

int fnn_shard_split_backward(fnn_shard *sh, int i, int n_threads) {
    const fnn_shard_outer *o = &sh->outer[i];
    size_t cols = (size_t)o->d_out, rows = (size_t)o->max_rows, r0, r1;
    const float *w = sh->params + o->at;
    if (split_barrier(sh) != 0) return -1;      /* every rank's output gradients are written */
    if (!counts_fit(sh, o)) return -3;
    split_rows(sh, o, &r0, &r1);
    for (int k = 0, end; k < sh->ranks && r1 > r0; k = end) {
        int n = next_run(sh, o, k, 0, &end);
        if (n <= 0) continue;
        fnn_gemm(0, 1, n, (int)(r1 - r0), (int)cols, 1.0f, o->dz + (size_t)k * rows * cols,
                 (int)cols, w + r0 * cols, (int)cols, 0.0f,
                 o->dx_all + (size_t)k * rows * o->d_in + r0, o->d_in, n_threads);
    }
    return split_barrier(sh) != 0 ? -1 : 0;     /* every rank's columns are written */
}

#else   /* the Python path (fnn_shard_supported() is 0): never called */

int64_t fnn_shard_clock(void) { return 0; }
int fnn_shard_barrier(fnn_shard *sh) { (void)sh; return -2; }
int fnn_shard_reduce(fnn_shard *sh, float scale, int bad, int n_threads) {
    (void)sh; (void)scale; (void)bad; (void)n_threads;
    return -2;
}
int fnn_shard_update(fnn_shard *sh, const float *scalars, int n_threads) {
    (void)sh; (void)scalars; (void)n_threads;
    return -2;
}
int fnn_shard_step(fnn_shard *sh, const float *scalars, int n_threads) {
    (void)sh; (void)scalars; (void)n_threads;
    return -2;
}
int fnn_shard_split_forward(fnn_shard *sh, int i, float *z, int n_threads) {
    (void)sh; (void)i; (void)z; (void)n_threads;
    return -2;
}
int fnn_shard_split_backward(fnn_shard *sh, int i, int n_threads) {
    (void)sh; (void)i; (void)n_threads;
    return -2;
}

#endif
