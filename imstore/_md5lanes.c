/* MD5 of several independent streams at once, one stream per SIMD lane (multi-buffer MD5).
 *
 * Why: S3 requires the MD5 of every part as its ETag. One MD5 is a serial chain (OpenSSL: ~4.8 cycles per byte,
 * 0.5-0.8 GB/s here), but aws-cli sends ten parts at once, so a worker holds several parts' MD5s that can advance
 * together: AVX2 runs eight of them in the instructions one would take. MinIO does the same in Go (md5-simd).
 *
 * update(states, buffers): advance each state by its buffer; the GIL is released while hashing. A state is a
 * bytearray of STATE_SIZE bytes (see md5_state); Python (imstore/md5lanes.py) makes them and pads the last block,
 * so this file only ever runs MD5's compression function. Optional: without a compiler, md5lanes.py uses hashlib.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#endif

typedef struct {
    uint32_t h[4];     /* a, b, c, d: little-endian, so the first 16 bytes are the digest once padded */
    uint64_t length;   /* bytes hashed so far */
    uint32_t tail_len; /* bytes waiting in tail for a whole block */
    uint32_t unused;
    uint8_t tail[64];
} md5_state;

#define STATE_SIZE ((Py_ssize_t)sizeof(md5_state))
#define MAX_LANES 16

/* The 64 steps of RFC 1321, each STEP(function, a, b, c, d, message word, constant, rotation). */
#define MD5_STEPS(S1, S2, S3, S4)                                                                                      \
    S1(a, b, c, d, 0, 0xd76aa478, 7) S1(d, a, b, c, 1, 0xe8c7b756, 12) S1(c, d, a, b, 2, 0x242070db, 17)              \
    S1(b, c, d, a, 3, 0xc1bdceee, 22) S1(a, b, c, d, 4, 0xf57c0faf, 7) S1(d, a, b, c, 5, 0x4787c62a, 12)              \
    S1(c, d, a, b, 6, 0xa8304613, 17) S1(b, c, d, a, 7, 0xfd469501, 22) S1(a, b, c, d, 8, 0x698098d8, 7)              \
    S1(d, a, b, c, 9, 0x8b44f7af, 12) S1(c, d, a, b, 10, 0xffff5bb1, 17) S1(b, c, d, a, 11, 0x895cd7be, 22)           \
    S1(a, b, c, d, 12, 0x6b901122, 7) S1(d, a, b, c, 13, 0xfd987193, 12) S1(c, d, a, b, 14, 0xa679438e, 17)           \
    S1(b, c, d, a, 15, 0x49b40821, 22)                                                                                 \
    S2(a, b, c, d, 1, 0xf61e2562, 5) S2(d, a, b, c, 6, 0xc040b340, 9) S2(c, d, a, b, 11, 0x265e5a51, 14)              \
    S2(b, c, d, a, 0, 0xe9b6c7aa, 20) S2(a, b, c, d, 5, 0xd62f105d, 5) S2(d, a, b, c, 10, 0x02441453, 9)              \
    S2(c, d, a, b, 15, 0xd8a1e681, 14) S2(b, c, d, a, 4, 0xe7d3fbc8, 20) S2(a, b, c, d, 9, 0x21e1cde6, 5)             \
    S2(d, a, b, c, 14, 0xc33707d6, 9) S2(c, d, a, b, 3, 0xf4d50d87, 14) S2(b, c, d, a, 8, 0x455a14ed, 20)             \
    S2(a, b, c, d, 13, 0xa9e3e905, 5) S2(d, a, b, c, 2, 0xfcefa3f8, 9) S2(c, d, a, b, 7, 0x676f02d9, 14)              \
    S2(b, c, d, a, 12, 0x8d2a4c8a, 20)                                                                                 \
    S3(a, b, c, d, 5, 0xfffa3942, 4) S3(d, a, b, c, 8, 0x8771f681, 11) S3(c, d, a, b, 11, 0x6d9d6122, 16)             \
    S3(b, c, d, a, 14, 0xfde5380c, 23) S3(a, b, c, d, 1, 0xa4beea44, 4) S3(d, a, b, c, 4, 0x4bdecfa9, 11)             \
    S3(c, d, a, b, 7, 0xf6bb4b60, 16) S3(b, c, d, a, 10, 0xbebfbc70, 23) S3(a, b, c, d, 13, 0x289b7ec6, 4)            \
    S3(d, a, b, c, 0, 0xeaa127fa, 11) S3(c, d, a, b, 3, 0xd4ef3085, 16) S3(b, c, d, a, 6, 0x04881d05, 23)             \
    S3(a, b, c, d, 9, 0xd9d4d039, 4) S3(d, a, b, c, 12, 0xe6db99e5, 11) S3(c, d, a, b, 15, 0x1fa27cf8, 16)            \
    S3(b, c, d, a, 2, 0xc4ac5665, 23)                                                                                  \
    S4(a, b, c, d, 0, 0xf4292244, 6) S4(d, a, b, c, 7, 0x432aff97, 10) S4(c, d, a, b, 14, 0xab9423a7, 15)             \
    S4(b, c, d, a, 5, 0xfc93a039, 21) S4(a, b, c, d, 12, 0x655b59c3, 6) S4(d, a, b, c, 3, 0x8f0ccc92, 10)             \
    S4(c, d, a, b, 10, 0xffeff47d, 15) S4(b, c, d, a, 1, 0x85845dd1, 21) S4(a, b, c, d, 8, 0x6fa87e4f, 6)             \
    S4(d, a, b, c, 15, 0xfe2ce6e0, 10) S4(c, d, a, b, 6, 0xa3014314, 15) S4(b, c, d, a, 13, 0x4e0811a1, 21)           \
    S4(a, b, c, d, 4, 0xf7537e82, 6) S4(d, a, b, c, 11, 0xbd3af235, 10) S4(c, d, a, b, 2, 0x2ad7d2bb, 15)             \
    S4(b, c, d, a, 9, 0xeb86d391, 21)

/* ---- one stream: plain C ---- */

#define ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define SCALAR_STEP(f, a, b, c, d, i, k, s)                                                                            \
    a = (a + m[i] + (uint32_t)(k)) + f;                                                                                \
    a = ROTL(a, s) + b;
#define SF(a, b, c, d, i, k, s) SCALAR_STEP((d ^ (b & (c ^ d))), a, b, c, d, i, k, s)
#define SG(a, b, c, d, i, k, s) SCALAR_STEP((c ^ (d & (b ^ c))), a, b, c, d, i, k, s)
#define SH(a, b, c, d, i, k, s) SCALAR_STEP((b ^ c ^ d), a, b, c, d, i, k, s)
#define SI(a, b, c, d, i, k, s) SCALAR_STEP((c ^ (b | ~d)), a, b, c, d, i, k, s)

static void md5_blocks_scalar(uint32_t h[4], const uint8_t *block, size_t count) {
    for (size_t n = 0; n < count; n++, block += 64) {
        uint32_t m[16];
        memcpy(m, block, 64); /* x86 is little-endian, as MD5's words are */
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
        MD5_STEPS(SF, SG, SH, SI)
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
    }
}

/* ---- up to eight streams: one stream per 32-bit lane of a 256-bit vector (AVX2; AVX-512VL where there is) ---- */

#ifdef HAVE_AVX2_PATH
#define V_ADD _mm256_add_epi32
/* a + word + constant does not wait for b, c, d: only f, one add, the rotation and the last add are on the chain
 * from one step to the next, which bounds a pass (latency, not width). So a step is run for every group of eight
 * lanes before the next step: two groups' chains interleave and sixteen lanes cost little more than eight. */
#define VECTOR_STEP(f, a, b, c, d, i, k, s)                                                                            \
    for (int g = 0; g < GROUPS; g++) {                                                                                 \
        a[g] = V_ADD(V_ADD(a[g], V_ADD(w[g][i], _mm256_set1_epi32((int)(k)))), f);                                    \
        a[g] = V_ADD(V_ROTL(a[g], s), b[g]);                                                                           \
    }

/* Eight rows of eight 32-bit words in, eight columns out: out[j] holds word j of every row. */
__attribute__((target("avx2"))) static inline void transpose8(const __m256i r[8], __m256i out[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        out[j] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x20);
        out[j + 4] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x31);
    }
}

/* Lane l hashes counts[l] blocks from data[l]; a lane out of blocks reads a zero block and keeps its state. GROUPS
 * (1 or 2) vectors of eight lanes each. The body is written once and compiled four times: one group and two, with
 * the step functions of each instruction set. */
#define MD5_LANES_BODY(groups)                                                                                         \
    enum { GROUPS = groups, LANES = 8 * groups };                                                                      \
    static const uint8_t zero_block[64];                                                                               \
    uint32_t column[4][LANES];                                                                                         \
    int32_t count32[LANES];                                                                                            \
    size_t most = 0;                                                                                                   \
    for (int l = 0; l < LANES; l++) {                                                                                  \
        for (int j = 0; j < 4; j++)                                                                                    \
            column[j][l] = l < used ? h[l][j] : 0;                                                                     \
        size_t count = l < used ? counts[l] : 0;                                                                       \
        count32[l] = (int32_t)count; /* callers keep counts below 2^31 blocks */                                       \
        if (count > most)                                                                                              \
            most = count;                                                                                              \
    }                                                                                                                  \
    __m256i a0[GROUPS], b0[GROUPS], c0[GROUPS], d0[GROUPS], counts_v[GROUPS];                                          \
    for (int g = 0; g < GROUPS; g++) {                                                                                 \
        a0[g] = _mm256_loadu_si256((const __m256i *)&column[0][8 * g]);                                                \
        b0[g] = _mm256_loadu_si256((const __m256i *)&column[1][8 * g]);                                                \
        c0[g] = _mm256_loadu_si256((const __m256i *)&column[2][8 * g]);                                                \
        d0[g] = _mm256_loadu_si256((const __m256i *)&column[3][8 * g]);                                                \
        counts_v[g] = _mm256_loadu_si256((const __m256i *)&count32[8 * g]);                                            \
    }                                                                                                                  \
    const __m256i ones = _mm256_set1_epi32(-1);                                                                        \
    (void)ones;                                                                                                        \
    for (size_t n = 0; n < most; n++) {                                                                                \
        __m256i rows[8], w[GROUPS][16], a[GROUPS], b[GROUPS], c[GROUPS], d[GROUPS];                                    \
        for (int g = 0; g < GROUPS; g++) {                                                                             \
            const uint8_t *block[8];                                                                                   \
            for (int l = 0; l < 8; l++) {                                                                              \
                int lane = 8 * g + l;                                                                                  \
                block[l] = (lane < used && n < counts[lane]) ? data[lane] + 64 * n : zero_block;                       \
            }                                                                                                          \
            for (int half = 0; half < 2; half++) {                                                                     \
                for (int l = 0; l < 8; l++)                                                                            \
                    rows[l] = _mm256_loadu_si256((const __m256i *)(block[l] + 32 * half));                             \
                transpose8(rows, w[g] + 8 * half);                                                                     \
            }                                                                                                          \
            a[g] = a0[g], b[g] = b0[g], c[g] = c0[g], d[g] = d0[g];                                                    \
        }                                                                                                              \
        MD5_STEPS(VF, VG, VH, VI)                                                                                      \
        /* lanes still in their blocks take the new state; the others keep theirs */                                   \
        for (int g = 0; g < GROUPS; g++) {                                                                             \
            const __m256i active = _mm256_cmpgt_epi32(counts_v[g], _mm256_set1_epi32((int)n));                        \
            a0[g] = _mm256_blendv_epi8(a0[g], V_ADD(a0[g], a[g]), active);                                             \
            b0[g] = _mm256_blendv_epi8(b0[g], V_ADD(b0[g], b[g]), active);                                             \
            c0[g] = _mm256_blendv_epi8(c0[g], V_ADD(c0[g], c[g]), active);                                             \
            d0[g] = _mm256_blendv_epi8(d0[g], V_ADD(d0[g], d[g]), active);                                             \
        }                                                                                                              \
    }                                                                                                                  \
    for (int g = 0; g < GROUPS; g++) {                                                                                 \
        _mm256_storeu_si256((__m256i *)&column[0][8 * g], a0[g]);                                                      \
        _mm256_storeu_si256((__m256i *)&column[1][8 * g], b0[g]);                                                      \
        _mm256_storeu_si256((__m256i *)&column[2][8 * g], c0[g]);                                                      \
        _mm256_storeu_si256((__m256i *)&column[3][8 * g], d0[g]);                                                      \
    }                                                                                                                  \
    for (int l = 0; l < used; l++)                                                                                     \
        for (int j = 0; j < 4; j++)                                                                                    \
            h[l][j] = column[j][l];

/* AVX2: F, G, H, I from and/or/xor; a rotation is two shifts and an or. */
#define V_ROTL(x, s) _mm256_or_si256(_mm256_slli_epi32(x, s), _mm256_srli_epi32(x, 32 - (s)))
#define V_XOR _mm256_xor_si256
#define VF(a, b, c, d, i, k, s) VECTOR_STEP(V_XOR(d[g], _mm256_and_si256(b[g], V_XOR(c[g], d[g]))), a, b, c, d, i, k, s)
#define VG(a, b, c, d, i, k, s) VECTOR_STEP(V_XOR(c[g], _mm256_and_si256(d[g], V_XOR(b[g], c[g]))), a, b, c, d, i, k, s)
#define VH(a, b, c, d, i, k, s) VECTOR_STEP(V_XOR(V_XOR(b[g], c[g]), d[g]), a, b, c, d, i, k, s)
#define VI(a, b, c, d, i, k, s) VECTOR_STEP(V_XOR(c[g], _mm256_or_si256(b[g], V_XOR(d[g], ones))), a, b, c, d, i, k, s)
__attribute__((target("avx2"))) static void md5_blocks_avx2(uint32_t h[][4], const size_t counts[], int used,
                                                           const uint8_t *const data[]) {
    MD5_LANES_BODY(1)
}
__attribute__((target("avx2"))) static void md5_blocks_avx2_x2(uint32_t h[][4], const size_t counts[], int used,
                                                              const uint8_t *const data[]) {
    MD5_LANES_BODY(2)
}
#undef V_ROTL
#undef VF
#undef VG
#undef VH
#undef VI

/* AVX-512VL: each of F, G, H, I is one ternary-logic instruction, a rotation one instruction. */
#define V_ROTL(x, s) _mm256_rol_epi32(x, s)
#define VF(a, b, c, d, i, k, s) VECTOR_STEP(_mm256_ternarylogic_epi32(b[g], c[g], d[g], 0xca), a, b, c, d, i, k, s)
#define VG(a, b, c, d, i, k, s) VECTOR_STEP(_mm256_ternarylogic_epi32(b[g], c[g], d[g], 0xe4), a, b, c, d, i, k, s)
#define VH(a, b, c, d, i, k, s) VECTOR_STEP(_mm256_ternarylogic_epi32(b[g], c[g], d[g], 0x96), a, b, c, d, i, k, s)
#define VI(a, b, c, d, i, k, s) VECTOR_STEP(_mm256_ternarylogic_epi32(b[g], c[g], d[g], 0x39), a, b, c, d, i, k, s)
#define AVX512 __attribute__((target("avx2,avx512f,avx512vl")))
AVX512 static void md5_blocks_avx512(uint32_t h[][4], const size_t counts[], int used, const uint8_t *const data[]) {
    MD5_LANES_BODY(1)
}
AVX512 static void md5_blocks_avx512_x2(uint32_t h[][4], const size_t counts[], int used, const uint8_t *const data[]) {
    MD5_LANES_BODY(2)
}
#endif

/* ---- one lane's work: the state's pending tail first, then the buffer's whole blocks ---- */

typedef struct {
    md5_state *state;
    const uint8_t *data;
    size_t length;
    int tail_block;    /* 1: the state's tail was filled to a whole block, hashed before the buffer's blocks */
    size_t data_start; /* where the buffer's whole blocks start */
    size_t blocks;     /* the buffer's whole blocks from data_start */
} lane_work;

static void plan_lane(lane_work *work) {
    md5_state *state = work->state;
    size_t used = 0;
    work->tail_block = 0;
    if (state->tail_len) {
        size_t take = 64 - state->tail_len;
        if (take > work->length)
            take = work->length;
        memcpy(state->tail + state->tail_len, work->data, take);
        state->tail_len += (uint32_t)take;
        used = take;
        work->tail_block = state->tail_len == 64;
    }
    work->data_start = used;
    work->blocks = (work->length - used) / 64;
}

static void finish_lane(lane_work *work) {
    md5_state *state = work->state;
    if (work->tail_block)
        state->tail_len = 0;
    size_t consumed = work->data_start + 64 * work->blocks;
    if (consumed < work->length) { /* the rest, less than a block, waits in the tail */
        memcpy(state->tail + state->tail_len, work->data + consumed, work->length - consumed);
        state->tail_len += (uint32_t)(work->length - consumed);
    }
    state->length += work->length;
}

static int vector_level = 0; /* 0: plain C only, 1: AVX2, 2: AVX-512VL */

static void hash_lanes(lane_work *work, Py_ssize_t count) {
    for (Py_ssize_t l = 0; l < count; l++) {
        plan_lane(&work[l]);
        if (work[l].tail_block) /* a block made of an earlier buffer's rest and this one's start: one, in plain C */
            md5_blocks_scalar(work[l].state->h, work[l].state->tail, 1);
    }
    Py_ssize_t start = 0;
#ifdef HAVE_AVX2_PATH
    /* up to sixteen lanes at a time (two vectors of eight when more than eight); a lone lane is faster in plain C */
    while (vector_level && count - start >= 2) {
        int used = (int)(count - start < MAX_LANES ? count - start : MAX_LANES);
        /* A pass of two groups costs AVX-512VL 1.25x one group's (its 32 registers hold both), AVX2 1.7x (16
         * registers: it spills), so with AVX2 nine lanes are faster as eight and one in plain C. */
        if (vector_level == 1 && used == 9)
            used = 8;
        uint32_t h[MAX_LANES][4];
        size_t counts[MAX_LANES];
        const uint8_t *data[MAX_LANES];
        for (int l = 0; l < used; l++) {
            lane_work *one = &work[start + l];
            memcpy(h[l], one->state->h, sizeof h[l]);
            counts[l] = one->blocks;
            data[l] = one->data + one->data_start;
        }
        if (vector_level == 2)
            (used > 8 ? md5_blocks_avx512_x2 : md5_blocks_avx512)(h, counts, used, data);
        else
            (used > 8 ? md5_blocks_avx2_x2 : md5_blocks_avx2)(h, counts, used, data);
        for (int l = 0; l < used; l++)
            memcpy(work[start + l].state->h, h[l], sizeof h[l]);
        start += used;
    }
#endif
    for (; start < count; start++) {
        lane_work *one = &work[start];
        md5_blocks_scalar(one->state->h, one->data + one->data_start, one->blocks);
    }
    for (Py_ssize_t l = 0; l < count; l++)
        finish_lane(&work[l]);
}

static PyObject *md5lanes_update(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *states, *buffers;
    if (!PyArg_ParseTuple(args, "O!O!:update", &PyList_Type, &states, &PyList_Type, &buffers))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(states);
    if (PyList_GET_SIZE(buffers) != count) {
        PyErr_SetString(PyExc_ValueError, "update: one buffer per state");
        return NULL;
    }
    Py_buffer *views = PyMem_Calloc((size_t)count * 2 + 1, sizeof(Py_buffer));
    lane_work *work = PyMem_Calloc((size_t)count + 1, sizeof(lane_work));
    Py_ssize_t held = 0; /* views[0 .. held) are held and must be released */
    PyObject *result = NULL;
    if (views == NULL || work == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t l = 0; l < count; l++) {
        Py_buffer *state = &views[held];
        if (PyObject_GetBuffer(PyList_GET_ITEM(states, l), state, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        held++;
        if (state->len != STATE_SIZE) {
            PyErr_Format(PyExc_ValueError, "update: a state is %zd bytes, not %zd", state->len, STATE_SIZE);
            goto done;
        }
        Py_buffer *data = &views[held];
        if (PyObject_GetBuffer(PyList_GET_ITEM(buffers, l), data, PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        held++;
        work[l].state = (md5_state *)state->buf;
        if (work[l].state->tail_len >= 64) {
            PyErr_SetString(PyExc_ValueError, "update: a state's tail is damaged");
            goto done;
        }
        work[l].data = data->buf;
        work[l].length = (size_t)data->len;
        for (Py_ssize_t k = 0; k < l; k++)
            if (work[k].state == work[l].state) { /* two lanes would write one state at once */
                PyErr_SetString(PyExc_ValueError, "update: a state appears twice");
                goto done;
            }
    }
    Py_BEGIN_ALLOW_THREADS hash_lanes(work, count);
    Py_END_ALLOW_THREADS result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(work);
    return result;
}

static PyMethodDef methods[] = {
    {"update", md5lanes_update, METH_VARARGS,
     "update(states, buffers): advance each MD5 state (a bytearray of STATE_SIZE) by its buffer, the lanes at once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_md5lanes", "Multi-buffer MD5 (see _md5lanes.c).", -1,
                                        methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__md5lanes(void) {
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        vector_level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 2 : 1;
    if (getenv("IMSTORE_MD5LANES_LEVEL")) /* tests reach each path on one machine; never above what the CPU has */
        vector_level = Py_MAX(0, Py_MIN(vector_level, atoi(getenv("IMSTORE_MD5LANES_LEVEL"))));
#endif
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "STATE_SIZE", STATE_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "LANES", vector_level ? MAX_LANES : 1) < 0 ||
        PyModule_AddIntConstant(module, "VECTOR_LEVEL", vector_level) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
