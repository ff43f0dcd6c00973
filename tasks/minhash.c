/*
 * MinHash signatures in C: the same values as tasks.dedup.minhash.signatures (its numpy
 * version splits every product into 32-bit halves, about twenty array passes per value;
 * here a value is one 128-bit product and two folds).
 *
 * signatures(shingles, offsets, a, b, out): shingles uint64 (any value; reduced mod p
 * = 2^61 - 1 first, as mod61 does), offsets int64 (document i owns shingles
 * [offsets[i], offsets[i + 1])), a and b uint64 (the permutations, below p), out uint64
 * (documents x len(a), C order, filled with the largest uint64 by the caller): out[i, k]
 * becomes min over document i's shingles x of (a[k] * x + b[k]) mod p.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define P61 ((((uint64_t)1) << 61) - 1)

static inline uint64_t mod61(uint64_t x) {
    uint64_t r = (x & P61) + (x >> 61);
    return r >= P61 ? r - P61 : r;
}

static int get(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->itemsize != 8) {
        PyErr_Format(PyExc_TypeError, "%s: expected 8-byte items, got %zd", what, view->itemsize);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

static PyObject *signatures(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *objs[5];
    if (!PyArg_ParseTuple(args, "OOOOO:signatures", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4]))
        return NULL;
    static const char *names[5] = {"shingles", "offsets", "a", "b", "out"};
    Py_buffer views[5] = {{0}};
    PyObject *result = NULL;
    for (int i = 0; i < 5; i++)
        if (get(objs[i], &views[i], i == 4, names[i]) < 0) goto done;
    const uint64_t *x = views[0].buf, *a = views[2].buf, *b = views[3].buf;
    const int64_t *offsets = views[1].buf;
    uint64_t *out = views[4].buf;
    Py_ssize_t n_shingles = views[0].len / 8, n_docs = views[1].len / 8 - 1, k = views[2].len / 8;
    if (views[3].len / 8 != k || n_docs < 0 || views[4].len / 8 != n_docs * k) {
        PyErr_SetString(PyExc_ValueError, "signatures: shapes of offsets, a, b and out disagree");
        goto done;
    }
    for (Py_ssize_t d = 0; d < n_docs; d++) {
        if (offsets[d] < 0 || offsets[d] > offsets[d + 1] || offsets[d + 1] > n_shingles) {
            PyErr_SetString(PyExc_ValueError, "signatures: offsets out of order or out of range");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t d = 0; d < n_docs; d++) {
        uint64_t *sig = out + d * k;
        for (int64_t s = offsets[d]; s < offsets[d + 1]; s++) {
            uint64_t v = mod61(x[s]);
            for (Py_ssize_t j = 0; j < k; j++) {
                unsigned __int128 t = (unsigned __int128)a[j] * v + b[j];  /* < 2^123 */
                uint64_t r = (uint64_t)(t & P61) + (uint64_t)(t >> 61);     /* < 2^63, = t mod p */
                r = (r & P61) + (r >> 61);
                if (r >= P61) r -= P61;
                if (r < sig[j]) sig[j] = r;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < 5; i++)
        if (views[i].obj) PyBuffer_Release(&views[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"signatures", signatures, METH_VARARGS, "MinHash minima into out (see the module)."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_minhash", "MinHash signatures in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__minhash(void) {
    return PyModule_Create(&module_def);
}
