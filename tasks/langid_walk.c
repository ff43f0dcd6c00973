/*
 * py3langid's feature extraction in C: the DFA walk over a text's UTF-8 bytes that
 * py3langid.langid.visit_counts runs as a Python loop, one step per byte (about half of
 * language id's time, and language id about a quarter of ingest's).
 *
 * visit_counts(nextmove, rowbase, output, text) takes the model's arrays (nextmove: the
 * transition table, int32 or uint32; rowbase: int64 row offsets; output: int32 feature per
 * state, -1 for none) and returns what the Python function returns: a dict {feature:
 * count} whose keys are in order of first visit (as Counter builds it, so the scores
 * summed from it are the same floats), or None when no feature was visited.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int32_t *counts;  /* per feature, zero between calls */
static Py_ssize_t n_counts;

static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of %zd bytes, got %zd", what, itemsize,
                     view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *visit_counts(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *nm_obj, *rowbase_obj, *out_obj;
    Py_buffer text;
    if (!PyArg_ParseTuple(args, "OOOy*:visit_counts", &nm_obj, &rowbase_obj, &out_obj, &text))
        return NULL;
    Py_buffer nm = {0}, rowbase = {0}, out = {0};
    PyObject *result = NULL;
    Py_ssize_t *order = NULL;
    if (get_buffer(nm_obj, &nm, 4, "nextmove") < 0) goto done;
    if (get_buffer(rowbase_obj, &rowbase, 8, "rowbase") < 0) goto done;
    if (get_buffer(out_obj, &out, 4, "output") < 0) goto done;
    const uint32_t *next = nm.buf;
    const int64_t *row = rowbase.buf;
    const int32_t *feature = out.buf;
    Py_ssize_t n_states = out.len / 4, n_next = nm.len / 4, n_rows = rowbase.len / 8;
    if (n_states > n_counts) {
        int32_t *grown = PyMem_Calloc(n_states, sizeof(int32_t));
        if (!grown) { PyErr_NoMemory(); goto done; }
        PyMem_Free(counts);
        counts = grown;
        n_counts = n_states;
    }
    order = PyMem_Malloc((text.len + 1) * sizeof(Py_ssize_t));
    if (!order) { PyErr_NoMemory(); goto done; }
    Py_ssize_t n_order = 0;
    const unsigned char *bytes = text.buf;
    uint32_t state = 0;
    for (Py_ssize_t i = 0; i < text.len; i++) {
        if (state >= (uint32_t)n_rows || row[state] + bytes[i] >= n_next) {
            PyErr_SetString(PyExc_ValueError, "language-id model: transition out of range");
            goto reset;
        }
        state = next[row[state] + bytes[i]];
        if (state >= (uint32_t)n_states) {
            PyErr_SetString(PyExc_ValueError, "language-id model: state out of range");
            goto reset;
        }
        int32_t f = feature[state];
        if (f >= 0) {
            if (f >= n_counts) {
                PyErr_SetString(PyExc_ValueError, "language-id model: feature out of range");
                goto reset;
            }
            if (counts[f]++ == 0) order[n_order++] = f;
        }
    }
    if (n_order == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto reset;
    }
    result = PyDict_New();
    for (Py_ssize_t k = 0; result && k < n_order; k++) {
        PyObject *key = PyLong_FromSsize_t(order[k]);
        PyObject *value = PyLong_FromLong(counts[order[k]]);
        if (!key || !value || PyDict_SetItem(result, key, value) < 0) Py_CLEAR(result);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
reset:
    for (Py_ssize_t k = 0; k < n_order; k++) counts[order[k]] = 0;
done:
    PyMem_Free(order);
    if (nm.obj) PyBuffer_Release(&nm);
    if (rowbase.obj) PyBuffer_Release(&rowbase);
    if (out.obj) PyBuffer_Release(&out);
    PyBuffer_Release(&text);
    return result;
}

static PyMethodDef methods[] = {
    {"visit_counts", visit_counts, METH_VARARGS, "py3langid's DFA walk: {feature: count} or None."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_langid_walk", "py3langid's feature extraction in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__langid_walk(void) {
    return PyModule_Create(&module_def);
}
