/*
 * The filters' word tokenizer (tasks.filters.text._TOKEN_RE) as a hand-written scanner.
 *
 * The regex is  (URL | ABBREVIATION | WORD | APOSTROPHE_SUFFIX | UNSPACED) | PUNCTUATION+
 * and findall returns one item per match: the word, or "" for a run of punctuation.  At
 * each position the scanner tries the alternatives in the regex's order, as re does:
 *
 *   URL          "http" ["s"] "://" then the longest run of characters that are not
 *                whitespace or <>"' , ending at the last one that is not .,;:!?)]}
 *   ABBREVIATION one of the listed titles, then ".", not followed by a word character
 *   WORD         word characters, joined across "." + word characters and across
 *                digit "," digit (re's \d: Unicode decimal digits)
 *   APOSTROPHE   ' or U+2019 right after a word character, then word characters
 *   UNSPACED     one character of a script written without spaces
 *   PUNCTUATION  the longest run of characters that are none of whitespace, word, unspaced
 *
 * and skips a character where none matches (whitespace).  Word and unspaced characters come
 * from one table per code point built in Python from the same ranges as the regex
 * (configure), whitespace is re's \s (Py_UNICODE_ISSPACE).  tests/test_wordsplit_native.py
 * checks it against the regex on real text and on random strings.
 *
 * split(text) -> (words: tuple[str], tokens: int, unspaced: int)  as tokenize() needs
 * count_words(text) -> int                                         the words alone
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { IS_WORD = 1, IS_UNSPACED = 2 };

static PyObject *table_obj;  /* bytes, one class byte per code point 0..0x10FFFF */
static const unsigned char *table;
static PyObject *abbreviations;  /* tuple of str, in the regex's order */

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
} Text;

static inline Py_UCS4 at(const Text *t, Py_ssize_t i) {
    return PyUnicode_READ(t->kind, t->data, i);
}

static inline int word_at(const Text *t, Py_ssize_t i) {
    return i >= 0 && i < t->n && (table[at(t, i)] & IS_WORD);
}

static inline int digit_at(const Text *t, Py_ssize_t i) {
    return i >= 0 && i < t->n && Py_UNICODE_ISDECIMAL(at(t, i));
}

static int is_url_char(Py_UCS4 ch) {
    return !Py_UNICODE_ISSPACE(ch) && ch != '<' && ch != '>' && ch != '"' && ch != '\'';
}

static int is_url_end_char(Py_UCS4 ch) {
    return is_url_char(ch) && ch != '.' && ch != ',' && ch != ';' && ch != ':' && ch != '!' && ch != '?'
        && ch != ')' && ch != ']' && ch != '}';
}

static int matches_ascii(const Text *t, Py_ssize_t i, const char *s) {
    for (; *s; s++, i++)
        if (i >= t->n || at(t, i) != (Py_UCS4)(unsigned char)*s) return 0;
    return 1;
}

/* End of a URL match starting at i, or -1. */
static Py_ssize_t url_end(const Text *t, Py_ssize_t i) {
    Py_ssize_t j;
    if (matches_ascii(t, i, "https://")) j = i + 8;
    else if (matches_ascii(t, i, "http://")) j = i + 7;
    else return -1;
    Py_ssize_t end = -1;
    for (; j < t->n && is_url_char(at(t, j)); j++)
        if (is_url_end_char(at(t, j))) end = j + 1;
    return end;
}

/* End of an abbreviation match starting at i, or -1. */
static Py_ssize_t abbreviation_end(const Text *t, Py_ssize_t i) {
    Py_ssize_t count = PyTuple_GET_SIZE(abbreviations);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *abbr = PyTuple_GET_ITEM(abbreviations, k);
        Py_ssize_t len = PyUnicode_GET_LENGTH(abbr);
        if (i + len >= t->n) continue;
        int same = 1;
        for (Py_ssize_t c = 0; c < len && same; c++)
            same = at(t, i + c) == PyUnicode_READ_CHAR(abbr, c);
        if (same && at(t, i + len) == '.' && !word_at(t, i + len + 1)) return i + len + 1;
    }
    return -1;
}

static Py_ssize_t word_end(const Text *t, Py_ssize_t j) {
    while (word_at(t, j)) j++;
    for (;;) {
        if (j < t->n && at(t, j) == '.' && word_at(t, j + 1)) {
            j += 1;
        } else if (j < t->n && at(t, j) == ',' && digit_at(t, j - 1) && digit_at(t, j + 1) && word_at(t, j + 1)) {
            j += 1;
        } else {
            return j;
        }
        while (word_at(t, j)) j++;
    }
}

/* Scan text; words appended to `words` when not NULL. -1 on failure. */
static int scan(PyObject *text, PyObject *words, Py_ssize_t *n_tokens, Py_ssize_t *n_words) {
    Text t = {PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text)};
    Py_ssize_t i = 0, tokens = 0, count = 0;
    while (i < t.n) {
        Py_UCS4 ch = at(&t, i);
        unsigned char cls = table[ch];
        Py_ssize_t end = -1;
        if (cls & IS_WORD) {
            if (ch == 'h') end = url_end(&t, i);
            if (end < 0) end = abbreviation_end(&t, i);
            if (end < 0) end = word_end(&t, i);
        } else if ((ch == '\'' || ch == 0x2019) && word_at(&t, i - 1) && word_at(&t, i + 1)) {
            end = i + 1;
            while (word_at(&t, end)) end++;
        } else if (cls & IS_UNSPACED) {
            end = i + 1;
        } else if (Py_UNICODE_ISSPACE(ch)) {
            i++;
            continue;
        } else {  /* a run of punctuation and symbols: a token, not a word */
            Py_ssize_t j = i + 1;
            while (j < t.n && !(table[at(&t, j)] & (IS_WORD | IS_UNSPACED)) && !Py_UNICODE_ISSPACE(at(&t, j))) j++;
            tokens++;
            i = j;
            continue;
        }
        if (words) {
            PyObject *word = PyUnicode_Substring(text, i, end);
            if (!word || PyList_Append(words, word) < 0) {
                Py_XDECREF(word);
                return -1;
            }
            Py_DECREF(word);
        }
        tokens++;
        count++;
        i = end;
    }
    *n_tokens = tokens;
    *n_words = count;
    return 0;
}

/* Whether `text` can be scanned: configure() was called and it is a str (else an exception). */
static int ready(PyObject *text, const char *function) {
    if (!table) {
        PyErr_SetString(PyExc_RuntimeError, "_wordsplit.configure() was not called");
        return 0;
    }
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a str", function);
        return 0;
    }
    return 1;
}

static PyObject *split(PyObject *module, PyObject *text) {
    (void)module;
    if (!ready(text, "split")) return NULL;
    PyObject *words = PyList_New(0);
    if (!words) return NULL;
    Py_ssize_t tokens, count;
    if (scan(text, words, &tokens, &count) < 0) {
        Py_DECREF(words);
        return NULL;
    }
    Py_ssize_t unspaced = 0;
    if (!PyUnicode_IS_ASCII(text)) {
        Text t = {PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text)};
        for (Py_ssize_t i = 0; i < t.n; i++) unspaced += (table[at(&t, i)] & IS_UNSPACED) != 0;
    }
    PyObject *tuple = PyList_AsTuple(words);
    Py_DECREF(words);
    if (!tuple) return NULL;
    return Py_BuildValue("(Nnn)", tuple, tokens, unspaced);
}

static PyObject *count_words(PyObject *module, PyObject *text) {
    (void)module;
    if (!ready(text, "count_words")) return NULL;
    Py_ssize_t tokens, count;
    if (scan(text, NULL, &tokens, &count) < 0) return NULL;
    return PyLong_FromSsize_t(count);
}

/* configure(table: bytes of 0x110000 classes, abbreviations: tuple[str]) */
static PyObject *configure(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *new_table, *new_abbreviations;
    if (!PyArg_ParseTuple(args, "SO!:configure", &new_table, &PyTuple_Type, &new_abbreviations)) return NULL;
    if (PyBytes_GET_SIZE(new_table) != 0x110000) {
        PyErr_SetString(PyExc_ValueError, "configure: the table needs one byte per code point (0x110000)");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(new_abbreviations); k++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(new_abbreviations, k))) {
            PyErr_SetString(PyExc_TypeError, "configure: abbreviations must be str");
            return NULL;
        }
    }
    Py_INCREF(new_table);
    Py_INCREF(new_abbreviations);
    Py_XSETREF(table_obj, new_table);
    Py_XSETREF(abbreviations, new_abbreviations);
    table = (const unsigned char *)PyBytes_AS_STRING(table_obj);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"split", split, METH_O, "(words, tokens, unspaced) of a text, as the token regex finds them."},
    {"count_words", count_words, METH_O, "The number of words of a text."},
    {"configure", configure, METH_VARARGS, "Set the class table and the abbreviations."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_wordsplit", "The filters' word tokenizer in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__wordsplit(void) {
    return PyModule_Create(&module_def);
}
