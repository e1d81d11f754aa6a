/* runtime._native: the per-frame hot path outside the network, in portable C99 (x86-64 and aarch64).
 *
 *   pack_boxes(frame, H, W, boxes, n, out, out_h, out_w, mean3, std3, swap_rb, keep_aspect, pad, half)
 *   pack_quads(... same, boxes are 4 points each ...)
 *   decode(probs, N, T, C, mode, special, ids, conf, lengths, seqconf)
 *
 * Every array arrives as a buffer that runtime/fastpath.py has already validated and allocated; this file checks
 * the sizes again (a wrong call raises ValueError, never reads or writes out of bounds) and releases the GIL for the
 * loops. runtime/_native_py.py is the NumPy twin: same arithmetic, same results (decode exact, pixels within 1 LSB).
 *
 * Axis-aligned boxes are resampled with Pillow's bicubic algorithm (separable, antialiased: the kernel widens by
 * the downscale factor; horizontal pass, rounding to 8 bits, vertical pass). Training calls this same code through
 * runtime.preprocess.prepare, so the camera feeds the network exactly what it learned on. Quads are
 * rectified by a perspective map with box-filtered bilinear supersampling (antialiasing without a temporary image).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------------------- */
/* float -> IEEE half, round to nearest even (no F16C dependency: portable)                                    */
static uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mant = x & 0x007fffffu;
    int32_t exp = (int32_t)((x >> 23) & 0xffu);
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0u)); /* inf / nan */
    exp = exp - 127 + 15;
    if (exp >= 0x1f) return (uint16_t)(sign | 0x7c00u);                       /* overflow -> inf */
    if (exp <= 0) {                                                            /* subnormal or zero */
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x00800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1u);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++; /* may carry into the exponent: correct */
    return (uint16_t)half;
}

static inline unsigned char clip8(double v) {
    if (v <= 0.0) return 0;
    if (v >= 255.0) return 255;
    return (unsigned char)floor(v + 0.5);
}

static double bicubic(double x) { /* Pillow's bicubic kernel, a = -0.5 */
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Pillow's precompute_coeffs: for each output index, the first input index and the normalised weights. */
static int coeffs(int in_size, double in0, double in1, int out_size, int *bounds, double **kk_out) {
    double scale = (in1 - in0) / out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * fscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *kk = (double *)malloc(sizeof(double) * (size_t)out_size * (size_t)ksize);
    if (!kk) return -1;
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ss = 1.0 / fscale, ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        int xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax < 0) xmax = 0;
        double *k = kk + (size_t)xx * ksize;
        for (int x = 0; x < xmax; x++) {
            double w = bicubic((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (int x = xmax; x < ksize; x++) k[x] = 0.0;
        bounds[xx * 2] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    *kk_out = kk;
    return ksize;
}

typedef struct {
    float mean[3], inv_std[3];
    int swap_rb, half;
    float pad;
} Norm;

/* Write one normalised value at out[c][y][x] of a (3, out_h, out_w) slab. */
static inline void put(void *out, size_t idx, float v, int half) {
    if (half)
        ((uint16_t *)out)[idx] = f32_to_f16(v);
    else
        ((float *)out)[idx] = v;
}

static void fill_pad(void *slab, int out_h, int out_w, int from_x, const Norm *nm) {
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < out_h; y++)
            for (int x = from_x; x < out_w; x++) put(slab, ((size_t)c * out_h + y) * out_w + x, nm->pad, nm->half);
}

static inline void put_pixel(void *slab, int out_h, int out_w, int y, int x, const unsigned char bgr[3], const Norm *nm) {
    for (int c = 0; c < 3; c++) {
        /* source channel order is the frame's (BGR from OpenCV); swap_rb makes the output RGB */
        int src = nm->swap_rb ? 2 - c : c;
        float v = ((float)bgr[src] * (1.0f / 255.0f) - nm->mean[c]) * nm->inv_std[c];
        put(slab, ((size_t)c * out_h + y) * out_w + x, v, nm->half);
    }
}

/* Target width for an aspect ratio r (w/h) at height out_h, in [1, out_w]. Clamped as a double before the cast:
 * a near-zero-height box gives a ratio far beyond INT_MAX, and that cast would be undefined. */
static int aspect_width(int out_h, int out_w, double r) {
    double t = floor(out_h * r + 0.5);
    if (!(t >= 1.0)) return 1;
    if (t > (double)out_w) return out_w;
    return (int)t;
}

/* One axis-aligned box -> one (3, out_h, out_w) slab. Returns 0, or -1 on allocation failure. */
static int pack_one_box(const unsigned char *frame, int H, int W, const double *b, void *slab, int out_h, int out_w,
                        int keep_aspect, const Norm *nm) {
    double x0 = b[0], y0 = b[1], x1 = b[2], y1 = b[3];
    int tw = keep_aspect ? aspect_width(out_h, out_w, (x1 - x0) / (y1 - y0)) : out_w;
    int *bh = (int *)malloc(sizeof(int) * 2 * (size_t)tw), *bv = (int *)malloc(sizeof(int) * 2 * (size_t)out_h);
    double *kh = NULL, *kv = NULL;
    unsigned char *tmp = NULL;
    int rc = -1;
    if (!bh || !bv) goto done;
    int ksh = coeffs(W, x0, x1, tw, bh, &kh);
    int ksv = coeffs(H, y0, y1, out_h, bv, &kv);
    if (ksh < 0 || ksv < 0) goto done;
    /* Pillow skips a pass whose axis is an identity (whole axis, same size): its result is then bit-exact. */
    int need_h = !(tw == W && x0 == 0.0 && x1 == (double)W);
    int need_v = !(out_h == H && y0 == 0.0 && y1 == (double)H);
    int yfirst = bv[0], ylast = bv[(out_h - 1) * 2] + bv[(out_h - 1) * 2 + 1];
    if (ylast <= yfirst) ylast = yfirst + 1;
    if (ylast > H) ylast = H;
    int rows = ylast - yfirst;
    /* horizontal pass into a (rows, tw, 3) uint8 strip, as Pillow does (8-bit intermediate) */
    const unsigned char *src = frame;
    int src_stride = W * 3, src_row0 = 0;
    if (need_h) {
        tmp = (unsigned char *)malloc((size_t)rows * tw * 3);
        if (!tmp) goto done;
        for (int y = 0; y < rows; y++) {
            const unsigned char *row = frame + (size_t)(y + yfirst) * W * 3;
            for (int x = 0; x < tw; x++) {
                const double *k = kh + (size_t)x * ksh;
                int xmin = bh[x * 2], n = bh[x * 2 + 1];
                double s0 = 0, s1 = 0, s2 = 0;
                for (int i = 0; i < n; i++) {
                    const unsigned char *p = row + (size_t)(xmin + i) * 3;
                    s0 += p[0] * k[i];
                    s1 += p[1] * k[i];
                    s2 += p[2] * k[i];
                }
                unsigned char *q = tmp + ((size_t)y * tw + x) * 3;
                q[0] = clip8(s0);
                q[1] = clip8(s1);
                q[2] = clip8(s2);
            }
        }
        src = tmp;
        src_stride = tw * 3;
        src_row0 = yfirst;
    }
    for (int y = 0; y < out_h; y++) {
        const double *k = kv + (size_t)y * ksv;
        int ymin = bv[y * 2] - src_row0, n = bv[y * 2 + 1];
        for (int x = 0; x < tw; x++) {
            unsigned char px[3];
            if (need_v) {
                double s0 = 0, s1 = 0, s2 = 0;
                for (int i = 0; i < n; i++) {
                    const unsigned char *p = src + (size_t)(ymin + i) * src_stride + (size_t)x * 3;
                    s0 += p[0] * k[i];
                    s1 += p[1] * k[i];
                    s2 += p[2] * k[i];
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            } else {
                const unsigned char *p = src + (size_t)(y + yfirst - src_row0) * src_stride + (size_t)x * 3;
                px[0] = p[0];
                px[1] = p[1];
                px[2] = p[2];
            }
            put_pixel(slab, out_h, out_w, y, x, px, nm);
        }
    }
    if (tw < out_w) fill_pad(slab, out_h, out_w, tw, nm);
    rc = 0;
done:
    free(bh);
    free(bv);
    free(kh);
    free(kv);
    free(tmp);
    return rc;
}

/* Bilinear sample at pixel-centre coordinates (x, y), edges replicated. */
static inline void bilinear(const unsigned char *frame, int H, int W, double x, double y, double acc[3]) {
    x -= 0.5;
    y -= 0.5;
    if (x < 0) x = 0;
    if (y < 0) y = 0;
    if (x > W - 1) x = W - 1;
    if (y > H - 1) y = H - 1;
    int xi = (int)x, yi = (int)y;
    int xj = xi + 1 < W ? xi + 1 : xi, yj = yi + 1 < H ? yi + 1 : yi;
    double fx = x - xi, fy = y - yi;
    const unsigned char *a = frame + ((size_t)yi * W + xi) * 3, *b = frame + ((size_t)yi * W + xj) * 3;
    const unsigned char *c = frame + ((size_t)yj * W + xi) * 3, *d = frame + ((size_t)yj * W + xj) * 3;
    for (int ch = 0; ch < 3; ch++)
        acc[ch] += (a[ch] * (1 - fx) + b[ch] * fx) * (1 - fy) + (c[ch] * (1 - fx) + d[ch] * fx) * fy;
}

static inline double dist(double ax, double ay, double bx, double by) { return sqrt((ax - bx) * (ax - bx) + (ay - by) * (ay - by)); }

/* One quad (tl, tr, br, bl) -> one slab. Returns 0, or -2 for a degenerate quad. */
static int pack_one_quad(const unsigned char *frame, int H, int W, const double *q, void *slab, int out_h, int out_w,
                         int keep_aspect, const Norm *nm) {
    double x0 = q[0], y0 = q[1], x1 = q[2], y1 = q[3], x2 = q[4], y2 = q[5], x3 = q[6], y3 = q[7];
    double qw = 0.5 * (dist(x0, y0, x1, y1) + dist(x3, y3, x2, y2));
    double qh = 0.5 * (dist(x0, y0, x3, y3) + dist(x1, y1, x2, y2));
    if (!(qw >= 1.0 && qh >= 1.0)) return -2;
    int tw = keep_aspect ? aspect_width(out_h, out_w, qw / qh) : out_w;
    /* Heckbert's unit-square-to-quad projective map */
    double sx = x0 - x1 + x2 - x3, sy = y0 - y1 + y2 - y3, g = 0, h = 0;
    if (sx != 0.0 || sy != 0.0) {
        double dx1 = x1 - x2, dx2 = x3 - x2, dy1 = y1 - y2, dy2 = y3 - y2;
        double den = dx1 * dy2 - dx2 * dy1;
        if (fabs(den) < 1e-12) return -2;
        g = (sx * dy2 - dx2 * sy) / den;
        h = (dx1 * sy - sx * dy1) / den;
    }
    double a = x1 - x0 + g * x1, b = x3 - x0 + h * x3, c = x0;
    double d = y1 - y0 + g * y1, e = y3 - y0 + h * y3, f = y0;
    /* supersampling factor per axis: enough samples that each output pixel averages its whole footprint */
    int nx = (int)ceil(qw / tw), ny = (int)ceil(qh / out_h);
    if (nx < 1) nx = 1;
    if (ny < 1) ny = 1;
    if (nx > 8) nx = 8;
    if (ny > 8) ny = 8;
    double inv = 1.0 / (nx * ny);
    for (int y = 0; y < out_h; y++) {
        for (int x = 0; x < tw; x++) {
            double acc[3] = {0, 0, 0};
            for (int j = 0; j < ny; j++) {
                double v = (y + (j + 0.5) / ny) / out_h;
                for (int i = 0; i < nx; i++) {
                    double u = (x + (i + 0.5) / nx) / tw;
                    double w = g * u + h * v + 1.0;
                    if (fabs(w) < 1e-12) w = 1e-12;
                    bilinear(frame, H, W, (a * u + b * v + c) / w, (d * u + e * v + f) / w, acc);
                }
            }
            unsigned char px[3] = {clip8(acc[0] * inv), clip8(acc[1] * inv), clip8(acc[2] * inv)};
            put_pixel(slab, out_h, out_w, y, x, px, nm);
        }
    }
    if (tw < out_w) fill_pad(slab, out_h, out_w, tw, nm);
    return 0;
}

static int get_buf(PyObject *o, Py_buffer *v, int writable, const char *name) {
    if (PyObject_GetBuffer(o, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous%s buffer", name, writable ? " writable" : "");
        return -1;
    }
    return 0;
}

/* Acquire n buffers, all or none: on a failure the ones already acquired are released. The first n_read are
 * read-only inputs, the rest writable outputs. */
static int get_bufs(PyObject **objs, Py_buffer *bufs, const char **names, int n, int n_read) {
    for (int i = 0; i < n; i++)
        if (get_buf(objs[i], &bufs[i], i >= n_read, names[i]) < 0) {
            while (i--) PyBuffer_Release(&bufs[i]);
            return -1;
        }
    return 0;
}

static void release_bufs(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&bufs[i]);
}

static PyObject *pack_impl(PyObject *args, int quads) {
    PyObject *fo, *bo, *oo, *mo, *so;
    int H, W, n, out_h, out_w, swap_rb, keep_aspect, half;
    float pad;
    if (!PyArg_ParseTuple(args, "OiiOiOiiOOiifi", &fo, &H, &W, &bo, &n, &oo, &out_h, &out_w, &mo, &so, &swap_rb,
                          &keep_aspect, &pad, &half))
        return NULL;
    if (H < 1 || W < 1 || n < 0 || out_h < 1 || out_w < 1) return PyErr_Format(PyExc_ValueError, "pack: bad sizes");
    double mean[3], stdv[3];
    for (int i = 0; i < 3; i++) {
        PyObject *m = PySequence_GetItem(mo, i), *s = PySequence_GetItem(so, i);
        if (!m || !s) {
            Py_XDECREF(m);
            Py_XDECREF(s);
            return PyErr_Format(PyExc_ValueError, "pack: mean and std need 3 values");
        }
        mean[i] = PyFloat_AsDouble(m);
        stdv[i] = PyFloat_AsDouble(s);
        Py_DECREF(m);
        Py_DECREF(s);
        if (PyErr_Occurred()) return NULL;
        if (!(stdv[i] > 0)) return PyErr_Format(PyExc_ValueError, "pack: std must be > 0");
    }
    PyObject *objs[3] = {fo, bo, oo};
    const char *names[3] = {"frame", "boxes", "out"};
    Py_buffer bufs[3];
    if (get_bufs(objs, bufs, names, 3, 2) < 0) return NULL;
    Py_buffer fb = bufs[0], bb = bufs[1], ob = bufs[2];
    size_t per = (size_t)3 * out_h * out_w, esz = half ? 2 : 4, bvals = quads ? 8 : 4;
    PyObject *ret = NULL;
    if ((size_t)fb.len != (size_t)H * W * 3 || (size_t)bb.len != (size_t)n * bvals * sizeof(double) ||
        (size_t)ob.len != (size_t)n * per * esz) {
        PyErr_SetString(PyExc_ValueError, "pack: buffer sizes do not match the given shapes");
        goto out;
    }
    Norm nm;
    for (int i = 0; i < 3; i++) {
        nm.mean[i] = (float)mean[i];
        nm.inv_std[i] = (float)(1.0 / stdv[i]);
    }
    nm.swap_rb = swap_rb;
    nm.half = half;
    nm.pad = pad;
    const double *boxes = (const double *)bb.buf;
    /* the caller validated the boxes; check again what would make us read outside the frame */
    for (int i = 0; i < n; i++) {
        const double *b = boxes + (size_t)i * bvals;
        for (size_t j = 0; j < bvals; j++)
            if (!isfinite(b[j])) {
                PyErr_Format(PyExc_ValueError, "pack: box %d has a non-finite coordinate", i);
                goto out;
            }
        if (!quads && !(b[0] >= 0 && b[1] >= 0 && b[2] <= W && b[3] <= H && b[2] - b[0] > 0 && b[3] - b[1] > 0)) {
            PyErr_Format(PyExc_ValueError, "pack: box %d is empty or outside the %dx%d frame", i, W, H);
            goto out;
        }
    }
    int err = 0, bad = -1;
    Py_BEGIN_ALLOW_THREADS;
    for (int i = 0; i < n && !err; i++) {
        void *slab = (char *)ob.buf + (size_t)i * per * esz;
        const double *b = boxes + (size_t)i * bvals;
        err = quads ? pack_one_quad((const unsigned char *)fb.buf, H, W, b, slab, out_h, out_w, keep_aspect, &nm)
                    : pack_one_box((const unsigned char *)fb.buf, H, W, b, slab, out_h, out_w, keep_aspect, &nm);
        if (err) bad = i;
    }
    Py_END_ALLOW_THREADS;
    if (err == -1)
        PyErr_NoMemory();
    else if (err == -2)
        PyErr_Format(PyExc_ValueError, "pack: quad %d is degenerate (zero area or self-intersecting)", bad);
    else
        ret = Py_NewRef(Py_None);
out:
    release_bufs(bufs, 3);
    return ret;
}

static PyObject *pack_boxes(PyObject *self, PyObject *args) { return pack_impl(args, 0); }
static PyObject *pack_quads(PyObject *self, PyObject *args) { return pack_impl(args, 1); }

/* decode(probs f32 (N,T,C), N, T, C, mode 0=ctc 1=eos, special, ids i32 (N,T), conf f32 (N,T), lengths i32 (N),
 * seqconf f64 (N)). CTC: argmax, drop blanks, collapse repeats (a held character keeps its most confident frame),
 * sequence confidence = product of character confidences (an empty read: its least confident frame).
 * EOS: cut at the first EOS; sequence confidence includes the EOS step (PARSeq's convention). */
static PyObject *decode(PyObject *self, PyObject *args) {
    PyObject *po, *io, *co, *lo, *so;
    int N, T, C, mode, special;
    if (!PyArg_ParseTuple(args, "OiiiiiOOOO", &po, &N, &T, &C, &mode, &special, &io, &co, &lo, &so)) return NULL;
    if (N < 0 || T < 0 || C < 1 || (mode != 0 && mode != 1) || special < 0 || special >= C)
        return PyErr_Format(PyExc_ValueError, "decode: bad arguments");
    PyObject *objs[5] = {po, io, co, lo, so};
    const char *names[5] = {"probs", "ids", "conf", "lengths", "seqconf"};
    Py_buffer bufs[5];
    if (get_bufs(objs, bufs, names, 5, 1) < 0) return NULL;
    Py_buffer pb = bufs[0], ib = bufs[1], cb = bufs[2], lb = bufs[3], sb = bufs[4];
    PyObject *ret = NULL;
    size_t NT = (size_t)N * T;
    if ((size_t)pb.len != NT * C * 4 || (size_t)ib.len != NT * 4 || (size_t)cb.len != NT * 4 || (size_t)lb.len != (size_t)N * 4 ||
        (size_t)sb.len != (size_t)N * 8) {
        PyErr_SetString(PyExc_ValueError, "decode: buffer sizes do not match the given shapes");
        goto out;
    }
    const float *P = (const float *)pb.buf;
    int32_t *ids = (int32_t *)ib.buf, *lens = (int32_t *)lb.buf;
    float *conf = (float *)cb.buf;
    double *seq = (double *)sb.buf;
    int nan_row = -1;
    Py_BEGIN_ALLOW_THREADS;
    for (int n = 0; n < N && nan_row < 0; n++) {
        int len = 0, prev = -1, ended = 0;
        double prod = 1.0;
        float minp = 1.0f;
        for (int t = 0; t < T; t++) {
            const float *row = P + ((size_t)n * T + t) * C;
            int best = 0;
            float bp = row[0];
            for (int c = 0; c < C; c++) {
                if (isnan(row[c])) {
                    nan_row = n;
                    break;
                }
                if (row[c] > bp) {
                    bp = row[c];
                    best = c;
                }
            }
            if (nan_row >= 0) break;
            if (mode == 0) {
                if (bp < minp) minp = bp;
                if (best != special) {
                    if (best != prev) {
                        ids[(size_t)n * T + len] = best;
                        conf[(size_t)n * T + len] = bp;
                        len++;
                    } else if (bp > conf[(size_t)n * T + len - 1]) {
                        conf[(size_t)n * T + len - 1] = bp;
                    }
                }
                prev = best;
            } else if (!ended) {
                prod *= (double)bp;
                if (best == special)
                    ended = 1;
                else {
                    ids[(size_t)n * T + len] = best;
                    conf[(size_t)n * T + len] = bp;
                    len++;
                }
            }
        }
        if (mode == 0) {
            prod = 1.0;
            for (int i = 0; i < len; i++) prod *= (double)conf[(size_t)n * T + i];
            if (len == 0) prod = T > 0 ? (double)minp : 1.0;
        }
        lens[n] = len;
        seq[n] = prod;
    }
    Py_END_ALLOW_THREADS;
    if (nan_row >= 0)
        PyErr_Format(PyExc_ValueError, "decode: probabilities of row %d contain NaN", nan_row);
    else
        ret = Py_NewRef(Py_None);
out:
    release_bufs(bufs, 5);
    return ret;
}

static PyMethodDef methods[] = {
    {"pack_boxes", pack_boxes, METH_VARARGS, "Resample axis-aligned boxes into a normalised NCHW batch."},
    {"pack_quads", pack_quads, METH_VARARGS, "Rectify 4-point quads into a normalised NCHW batch."},
    {"decode", decode, METH_VARARGS, "Greedy CTC / EOS decoding of (N, T, C) probabilities."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_native", "C hot path of tinytext's runtime", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&moddef); }
