/*
 * Step 1 of the `fast` extractor (tasks/extract.py) in C: cut a page into text blocks.
 *
 * The same rules as tasks.extract._BlockBuilder, line for line, fed by the same libxml2
 * parse: the HTML parser inside lxml (its etree module exports libxml2's functions; we
 * look them up with dlsym, so the parser, its version and its options are exactly the
 * ones lxml would use).  The SAX handlers are set as lxml sets them for a parser target
 * (start, end, characters and CDATA to us; comments, PIs and entity references off;
 * ignorableWhitespace left as libxml2's no-op), so the event stream is the one
 * _BlockBuilder sees and the blocks are equal (tests/test_extract_native.py).
 *
 * Why: on the 237 pages of extraction-dev, lxml handing each event to Python and the
 * Python callbacks cost over half of the extractor's time; here each event costs a
 * few C instructions and Python objects are made only for blocks and for the elements
 * that hold text.
 *
 * linearize(utf8: bytes, max_depth: int) returns
 *   None                      the page nests deeper than max_depth (HtmlTooDeep)
 *   False                     lxml would have given up (text that is not UTF-8)
 *   NotImplemented            over 2,000 distinct tag names: use the Python builder
 *   (blocks, parents, marks, hidden)
 *       blocks   list of Block (text, length, link_len, node, tag, prose)
 *       parents  per node id, the parent's id (-1 at the top)
 *       marks    per node id, its boilerplate mark (0 none, 1 weak, 2 strong)
 *       hidden   per node id, whether it is hidden (hidden, aria-hidden, style)
 *   marks and hidden as _Page.judge_elements gives them, from the tag and the attributes
 *   class, id, style, role, aria-hidden and hidden (Python's own functions and caches
 *   judge a class/id value and a style, so the rules live in one place).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

#include <libxml/xmlversion.h>
#include <libxml/parser.h>
#include <libxml/HTMLparser.h>

/* ---- libxml2, looked up in lxml's etree module ---------------------------------- */

static htmlParserCtxtPtr (*p_htmlCreateMemoryParserCtxt)(const char *, int);
static htmlDocPtr (*p_htmlCtxtReadMemory)(htmlParserCtxtPtr, const char *, int, const char *,
                                          const char *, int);
static void (*p_htmlFreeParserCtxt)(htmlParserCtxtPtr);
static void (*p_xmlStopParser)(xmlParserCtxtPtr);
static void (*p_xmlFreeDoc)(xmlDocPtr);

/* lxml's HTMLParser() defaults: recover, no network, compact. */
static const int PARSE_OPTIONS = HTML_PARSE_RECOVER | HTML_PARSE_NONET | HTML_PARSE_COMPACT;

/* ---- Block ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *text;
    PyObject *tag;
    Py_ssize_t length;
    Py_ssize_t link_len;
    Py_ssize_t node;
    char prose;
} Block;

static void block_dealloc(Block *self) {
    Py_XDECREF(self->text);
    Py_XDECREF(self->tag);
    PyObject_Free(self);
}

static PyMemberDef block_members[] = {
    {"text", T_OBJECT_EX, offsetof(Block, text), READONLY, "whitespace-collapsed text"},
    {"tag", T_OBJECT_EX, offsetof(Block, tag), READONLY, "tag of the owning block element"},
    {"length", T_PYSSIZET, offsetof(Block, length), READONLY, "characters of text"},
    {"link_len", T_PYSSIZET, offsetof(Block, link_len), READONLY, "characters inside <a>"},
    {"node", T_PYSSIZET, offsetof(Block, node), READONLY, "innermost enclosing element"},
    {"prose", T_BOOL, offsetof(Block, prose), READONLY, "a real sentence that is not a link"},
    {NULL},
};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tasks._htmlblocks.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One text block of a page (made by linearize only).",
    .tp_members = block_members,
};

/* ---- growable arrays ------------------------------------------------------------- */

typedef struct { char *data; Py_ssize_t len, cap; } Bytes;
typedef struct { Py_ssize_t *data; Py_ssize_t len, cap; } Ints;

static int bytes_reserve(Bytes *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int bytes_add(Bytes *b, const char *s, Py_ssize_t n) {
    if (bytes_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static int ints_push(Ints *a, Py_ssize_t v) {
    if (a->len == a->cap) {
        Py_ssize_t cap = a->cap ? 2 * a->cap : 64;
        Py_ssize_t *data = PyMem_Realloc(a->data, cap * sizeof(Py_ssize_t));
        if (!data) return -1;
        a->data = data;
        a->cap = cap;
    }
    a->data[a->len++] = v;
    return 0;
}

/* ---- tags: kind (as in tasks.extract._TAG_KIND) and a cached str ------------------ */

enum { K_SKIP, K_BLOCK, K_LINK, K_BREAK, K_CELL, K_INLINE, K_OTHER };

typedef struct {
    char *name;
    PyObject *str;
    int kind;
    int tag_mark;           /* _TAG_MARKS.get(tag, _NO_MARK) */
    char strong, weak, page;  /* in _STRONG_TAGS, in _WEAK_TAGS, html or body */
} TagEntry;
#define TAG_SLOTS 2048
static TagEntry tag_table[TAG_SLOTS];
static int tag_count;
static PyObject *tag_kinds;  /* the Python dict tag -> kind, set by configure() */

/* What tasks.extract judges the marks with, set by configure(): _TAG_MARKS, _STRONG_TAGS,
 * _WEAK_TAGS, {"html", "body"}, _STRONG_ROLES, _attr_mark, _mark_cache, _HIDDEN_STYLE.search */
enum { J_TAG_MARKS, J_STRONG_TAGS, J_WEAK_TAGS, J_PAGE_TAGS, J_STRONG_ROLES, J_ATTR_MARK, J_MARK_CACHE,
       J_HIDDEN_SEARCH, N_JUDGE };
static PyObject *judge[N_JUDGE];
enum { STRONG_MARK = 2, WEAK_MARK = 1, NO_MARK = 0 };

static int set_contains(int which, PyObject *str) {
    return PySet_Contains(judge[which], str);
}

static void tags_clear(void) {
    for (int i = 0; i < TAG_SLOTS; i++) {
        if (tag_table[i].name) {
            PyMem_Free(tag_table[i].name);
            Py_DECREF(tag_table[i].str);
            tag_table[i].name = NULL;
        }
    }
    tag_count = 0;
}

/* The entry for a tag name; NULL with an exception set on failure.  The table only
 * grows during a parse (it is cleared between pages when over half full), so the
 * entries' strings outlive every node that borrows them. */
static TagEntry *tag_lookup(const char *name, int *overflow) {
    size_t h = 5381;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = h * 33 + *p;
    size_t i = h & (TAG_SLOTS - 1);
    while (tag_table[i].name) {
        if (strcmp(tag_table[i].name, name) == 0) return &tag_table[i];
        i = (i + 1) & (TAG_SLOTS - 1);
    }
    if (tag_count >= TAG_SLOTS - 1) {  /* a page with 2,000 distinct tag names */
        *overflow = 1;
        return NULL;
    }
    PyObject *str = PyUnicode_DecodeUTF8(name, strlen(name), NULL);
    if (!str) return NULL;
    PyObject *kind = PyDict_GetItemWithError(tag_kinds, str);
    if (!kind && PyErr_Occurred()) { Py_DECREF(str); return NULL; }
    size_t n = strlen(name) + 1;
    char *copy = PyMem_Malloc(n);
    if (!copy) { Py_DECREF(str); PyErr_NoMemory(); return NULL; }
    memcpy(copy, name, n);
    tag_table[i].name = copy;
    tag_table[i].str = str;
    tag_table[i].kind = kind ? (int)PyLong_AsLong(kind) : K_OTHER;
    PyObject *mark = PyDict_GetItemWithError(judge[J_TAG_MARKS], str);
    int strong = set_contains(J_STRONG_TAGS, str), weak = set_contains(J_WEAK_TAGS, str);
    int page = set_contains(J_PAGE_TAGS, str);
    if (PyErr_Occurred()) {
        tag_table[i].name = NULL;
        PyMem_Free(copy);
        Py_DECREF(str);
        return NULL;
    }
    tag_table[i].tag_mark = mark ? (int)PyLong_AsLong(mark) : NO_MARK;
    tag_table[i].strong = (char)strong;
    tag_table[i].weak = (char)weak;
    tag_table[i].page = (char)page;
    tag_count++;
    return &tag_table[i];
}

/* ---- attributes the marks read ----------------------------------------------------- */

static const char *ATTR_NAMES[] = {"class", "id", "style", "role", "aria-hidden", "hidden"};
enum { A_CLASS, A_ID, A_STYLE, A_ROLE, A_ARIA_HIDDEN, A_HIDDEN };
#define N_ATTRS 6

static int attr_code(const char *name) {
    int code;
    switch (name[0]) {  /* most attributes are none of these: one comparison */
        case 'c': code = 0; break;
        case 'i': code = 1; break;
        case 's': code = 2; break;
        case 'r': code = 3; break;
        case 'a': code = 4; break;
        case 'h': code = 5; break;
        default: return -1;
    }
    return strcmp(name, ATTR_NAMES[code]) == 0 ? code : -1;
}

/* ---- UTF-8 and Python's whitespace ------------------------------------------------ */

/* Decode the code point at s[i] (i < n), advancing i; -1 when the bytes are not UTF-8
 * as Python's decoder reads it. */
static Py_UCS4 next_char(const unsigned char *s, Py_ssize_t n, Py_ssize_t *i) {
    unsigned char c = s[*i];
    if (c < 0x80) { (*i)++; return c; }
    int extra;
    Py_UCS4 ch, min;
    if (c >= 0xC2 && c <= 0xDF) { extra = 1; ch = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { extra = 2; ch = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { extra = 3; ch = c & 0x07; min = 0x10000; }
    else return (Py_UCS4)-1;
    if (*i + extra >= n) return (Py_UCS4)-1;
    for (int k = 1; k <= extra; k++) {
        unsigned char d = s[*i + k];
        if ((d & 0xC0) != 0x80) return (Py_UCS4)-1;
        ch = (ch << 6) | (d & 0x3F);
    }
    if (ch < min || ch > 0x10FFFF || (ch >= 0xD800 && ch <= 0xDFFF)) return (Py_UCS4)-1;
    *i += extra + 1;
    return ch;
}

/* Python's whitespace among the ASCII characters (str.isspace, str.split). */
static const unsigned char ASCII_SPACE[128] = {
    ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1,
    [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, [' '] = 1,
};

static inline int is_space(Py_UCS4 ch) {
    return ch < 128 ? ASCII_SPACE[ch] : Py_UNICODE_ISSPACE(ch);
}

static int valid_utf8(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {  /* eight ASCII bytes at a time */
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (!(word & 0x8080808080808080ULL)) { i += 8; continue; }
        }
        if (s[i] < 0x80) { i++; continue; }
        if (next_char(s, n, &i) == (Py_UCS4)-1) return 0;
    }
    return 1;
}

/* Characters of s[0:n] once stripped of whitespace (len(text.strip())); -1 if not UTF-8. */
static Py_ssize_t stripped_len(const unsigned char *s, Py_ssize_t n, int *all_space) {
    Py_ssize_t i = 0, chars = 0, first = -1, last = -1;
    while (i < n) {
        Py_UCS4 ch = s[i] < 0x80 ? s[i++] : next_char(s, n, &i);
        if (ch == (Py_UCS4)-1) return -1;
        if (!is_space(ch)) {
            if (first < 0) first = chars;
            last = chars;
        }
        chars++;
    }
    *all_space = first < 0;
    return first < 0 ? 0 : last - first + 1;
}

/* Whether s[0:n] is all whitespace (str.isspace, or empty); -1 if not UTF-8. */
static int all_space(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        Py_UCS4 ch = s[i] < 0x80 ? s[i++] : next_char(s, n, &i);
        if (ch == (Py_UCS4)-1) return -1;
        if (!is_space(ch)) return valid_utf8(s + i, n - i) ? 0 : -1;
    }
    return 1;
}

/* Append to out the words of s[0:n] joined by single spaces (" ".join(s.split())). */
static int collapse(const unsigned char *s, Py_ssize_t n, Bytes *out) {
    if (bytes_reserve(out, n) < 0) return -1;  /* the words never grow */
    char *o = out->data + out->len;
    Py_ssize_t i = 0;
    int pending_space = 0, any = 0;
    while (i < n) {
        Py_ssize_t at = i;
        Py_UCS4 ch = s[i] < 0x80 ? s[i++] : next_char(s, n, &i);
        if (ch == (Py_UCS4)-1) return -1;  /* validated on the way in: cannot happen */
        if (is_space(ch)) {
            pending_space = any;
            continue;
        }
        if (pending_space) {
            *o++ = ' ';
            pending_space = 0;
        }
        while (at < i) *o++ = (char)s[at++];
        any = 1;
    }
    out->len = o - out->data;
    return 0;
}

/* ---- the builder -------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t max_depth;
    PyObject *blocks;         /* list of Block */
    Ints parent;              /* per node: parent id */
    Ints tag;                 /* per node: TagEntry index */
    Ints attr_begin;          /* per node: first entry in attr_code/attr_off */
    Ints a_code, a_off, a_len;/* attribute entries, values in `arena` */
    Bytes arena;
    Ints path;                /* ids of the open elements, over a -1 */
    Ints open;                /* kinds of the open elements outside skipped ones */
    Ints owner;               /* TagEntry index of the open block elements (-1: "body") */
    Bytes parts;              /* text of the block being built; 0 bytes are <br> */
    Py_ssize_t last_block_node;
    int has_text;
    Py_ssize_t link_len;
    Py_ssize_t in_link;
    Py_ssize_t skip, skip_room;
    int too_deep, not_utf8, overflow, failed, stopped;
    htmlParserCtxtPtr ctxt;
} Builder;

static PyObject *body_str;  /* "body", the owner before any block element */

static void stop(Builder *b) {
    b->stopped = 1;
    p_xmlStopParser(b->ctxt);
}

static Builder *builder_of(void *ctx) {
    Builder *b = (Builder *)((xmlParserCtxtPtr)ctx)->_private;
    return b->stopped ? NULL : b;
}

static int is_sentence_end(Py_UCS4 ch) {
    return ch == '.' || ch == '!' || ch == '?' || ch == ';' || ch == ':' || ch == 0x3002
        || ch == 0xFF01 || ch == 0xFF1F || ch == 0x2026;
}

static int is_cjk_sentence_end(Py_UCS4 ch) {
    return ch == 0x3002 || ch == 0xFF01 || ch == 0xFF1F;
}

/* Turn the pending text into a block (called when it has some); -1 on failure. */
static int flush(Builder *b) {
    Bytes text = {0};
    const unsigned char *raw = (const unsigned char *)b->parts.data;
    Py_ssize_t n = b->parts.len, start = 0;
    Py_ssize_t link_len = b->link_len;
    b->has_text = 0;
    b->link_len = 0;
    int rc = -1;
    if (memchr(raw, 0, n)) {  /* keep the <br> line breaks, drop empty lines */
        for (Py_ssize_t i = 0; i <= n; i++) {
            if (i < n && raw[i] != 0) continue;
            Py_ssize_t before = text.len;
            if (before && bytes_add(&text, "\n", 1) < 0) goto done;
            Py_ssize_t marked = text.len;
            if (collapse(raw + start, i - start, &text) < 0) goto done;
            if (text.len == marked) text.len = before;  /* an empty line */
            start = i + 1;
        }
    } else if (collapse(raw, n, &text) < 0) {
        goto done;
    }
    b->parts.len = 0;
    Py_ssize_t node = b->path.data[b->path.len - 1];
    if (text.len == 0 || node < 0) { rc = 0; goto done; }
    Py_ssize_t length = 0, i = 0;
    int ascii = 1, sentence = 0, cjk = 0;
    const unsigned char *t = (const unsigned char *)text.data;
    while (i < text.len) {
        Py_UCS4 ch = next_char(t, text.len, &i);
        length++;
        if (ch >= 0x80) ascii = 0;
        if (is_sentence_end(ch)) sentence = 1;
        if (is_cjk_sentence_end(ch)) cjk = 1;
    }
    Block *block = PyObject_New(Block, &BlockType);
    if (!block) goto done;
    block->text = PyUnicode_DecodeUTF8(text.data, text.len, NULL);
    Py_ssize_t owner = b->owner.data[b->owner.len - 1];
    block->tag = owner < 0 ? body_str : tag_table[owner].str;
    Py_INCREF(block->tag);
    if (!block->text) { Py_DECREF(block); goto done; }
    block->length = length;
    block->link_len = link_len < length ? link_len : length;
    block->node = node;
    block->prose = link_len < 0.3 * length
        && ((length >= 40 && sentence) || (length >= 10 && !ascii && cjk));
    rc = PyList_Append(b->blocks, (PyObject *)block);
    Py_DECREF(block);
    b->last_block_node = node;
done:
    PyMem_Free(text.data);
    if (rc < 0) b->failed = 1;
    return rc;
}

static void on_start(void *ctx, const xmlChar *name, const xmlChar **atts) {
    Builder *b = builder_of(ctx);
    if (!b) return;
    if (atts) {  /* lxml decodes every attribute: text that is not UTF-8 makes it give up */
        for (const xmlChar **a = atts; a[0]; a += 2) {
            if (!valid_utf8(a[0], strlen((const char *)a[0]))
                    || (a[1] && !valid_utf8(a[1], strlen((const char *)a[1])))) {
                b->not_utf8 = 1;
                stop(b);
                return;
            }
        }
    }
    if (b->skip) {
        if (++b->skip > b->skip_room) { b->too_deep = 1; stop(b); }
        return;
    }
    if (b->open.len >= b->max_depth) { b->too_deep = 1; stop(b); return; }
    TagEntry *entry = tag_lookup((const char *)name, &b->overflow);
    if (!entry) {
        if (!b->overflow) b->failed = 1;
        stop(b);
        return;
    }
    int kind = entry->kind;
    Py_ssize_t tag_index = entry - tag_table;
    if (kind == K_BLOCK) {
        if (b->has_text && flush(b) < 0) { stop(b); return; }
        if (ints_push(&b->owner, tag_index) < 0) goto nomem;
    } else if (kind != K_OTHER) {
        if (kind == K_INLINE) {
            if (ints_push(&b->open, K_INLINE) < 0) goto nomem;
            return;
        }
        if (kind == K_SKIP) {
            b->skip = 1;
            b->skip_room = b->max_depth - b->open.len;
            return;
        }
        if (kind == K_LINK) {
            b->in_link++;
        } else if (kind == K_BREAK) {
            if (b->has_text && bytes_add(&b->parts, "\0", 1) < 0) goto nomem;
            if (ints_push(&b->open, K_BREAK) < 0) goto nomem;
            return;
        } else if (b->has_text) {  /* a table cell: cells of a row share one line */
            if (bytes_add(&b->parts, " | ", 3) < 0) goto nomem;
        }
    }
    Py_ssize_t node = b->parent.len;
    if (ints_push(&b->parent, b->path.data[b->path.len - 1]) < 0
            || ints_push(&b->tag, tag_index) < 0
            || ints_push(&b->attr_begin, b->a_code.len) < 0
            || ints_push(&b->path, node) < 0
            || ints_push(&b->open, kind) < 0)
        goto nomem;
    if (atts) {
        for (const xmlChar **a = atts; a[0]; a += 2) {
            int code = attr_code((const char *)a[0]);
            if (code < 0) continue;
            Py_ssize_t len = a[1] ? (Py_ssize_t)strlen((const char *)a[1]) : 0;
            if (ints_push(&b->a_code, code) < 0 || ints_push(&b->a_off, b->arena.len) < 0
                    || ints_push(&b->a_len, len) < 0
                    || bytes_add(&b->arena, a[1] ? (const char *)a[1] : "", len) < 0)
                goto nomem;
        }
    }
    return;
nomem:
    PyErr_NoMemory();
    b->failed = 1;
    stop(b);
}

static void on_end(void *ctx, const xmlChar *name) {
    (void)name;
    Builder *b = builder_of(ctx);
    if (!b) return;
    if (b->skip) { b->skip--; return; }
    if (b->open.len == 0) return;
    int kind = (int)b->open.data[--b->open.len];  /* the parser closes elements in order */
    if (kind == K_BLOCK) {
        if (b->has_text && flush(b) < 0) { stop(b); return; }
        b->owner.len--;
    } else if (kind == K_INLINE || kind == K_BREAK) {
        return;
    } else if (kind == K_LINK) {
        b->in_link--;
    }
    Py_ssize_t node = b->path.data[--b->path.len];
    if (PyList_GET_SIZE(b->blocks) == 0 || b->last_block_node < node) {
        /* no text under it: drop its subtree */
        Py_ssize_t first_attr = b->attr_begin.data[node];
        b->parent.len = b->tag.len = b->attr_begin.len = node;
        if (first_attr < b->a_code.len) b->arena.len = b->a_off.data[first_attr];
        b->a_code.len = b->a_off.len = b->a_len.len = first_attr;
    }
}

static void on_data(void *ctx, const xmlChar *data, int len) {
    Builder *b = builder_of(ctx);
    if (!b) return;
    /* lxml decodes every chunk, skipped ones too: text that is not UTF-8 makes it give up */
    Py_ssize_t link_chars = 0;
    if (b->skip || (b->has_text && !b->in_link)) {
        if (!valid_utf8(data, len)) goto not_utf8;
        if (b->skip) return;
    } else if (!b->has_text) {
        int space = all_space(data, len);
        if (space < 0) goto not_utf8;
        if (space) return;  /* whitespace before a block's first word is dropped anyway */
        b->has_text = 1;
    }
    if (b->in_link) {
        int ignored;
        link_chars = stripped_len(data, len, &ignored);
        if (link_chars < 0) goto not_utf8;
    }
    if (bytes_add(&b->parts, (const char *)data, len) < 0) {
        PyErr_NoMemory();
        b->failed = 1;
        stop(b);
        return;
    }
    b->link_len += link_chars;
    return;
not_utf8:
    b->not_utf8 = 1;
    stop(b);
}

static void on_error(void *ctx, const xmlError *error) {
    (void)ctx;
    (void)error;  /* a recovering parse: lxml files these in its error log, unread here */
}

static void builder_free(Builder *b) {
    Py_XDECREF(b->blocks);
    Ints *ints[] = {&b->parent, &b->tag, &b->attr_begin, &b->a_code, &b->a_off, &b->a_len,
                    &b->path, &b->open, &b->owner};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) PyMem_Free(ints[i]->data);
    PyMem_Free(b->arena.data);
    PyMem_Free(b->parts.data);
}

static PyObject *attr_str(Builder *b, Py_ssize_t k) {
    return PyUnicode_DecodeUTF8(b->arena.data + b->a_off.data[k], b->a_len.data[k], NULL);
}

/* The mark of a class or id value: _mark_cache, else _attr_mark (which fills the cache). */
static int value_mark(Builder *b, Py_ssize_t k) {
    PyObject *value = attr_str(b, k);
    if (!value) return -1;
    PyObject *mark = PyDict_GetItemWithError(judge[J_MARK_CACHE], value);
    if (mark) {
        Py_INCREF(mark);
    } else if (!PyErr_Occurred()) {
        mark = PyObject_CallOneArg(judge[J_ATTR_MARK], value);
    }
    Py_DECREF(value);
    if (!mark) return -1;
    long m = PyLong_AsLong(mark);
    Py_DECREF(mark);
    return (int)m;
}

/* (mark, hidden) of one node, as tasks.extract._Page.judge_elements and _element_flags
 * decide them from its tag and attributes (the last of a repeated attribute counts). */
static int judge_node(Builder *b, Py_ssize_t node, Py_ssize_t first, Py_ssize_t end, int *mark, int *hidden) {
    const TagEntry *entry = &tag_table[b->tag.data[node]];
    *hidden = 0;
    if (end == first) {
        *mark = entry->tag_mark;
        return 0;
    }
    Py_ssize_t last[N_ATTRS] = {-1, -1, -1, -1, -1, -1};
    for (Py_ssize_t k = first; k < end; k++) last[b->a_code.data[k]] = k;
    if (last[A_HIDDEN] >= 0) {
        *hidden = 1;
    } else if (last[A_ARIA_HIDDEN] >= 0 && b->a_len.data[last[A_ARIA_HIDDEN]] == 4
               && memcmp(b->arena.data + b->a_off.data[last[A_ARIA_HIDDEN]], "true", 4) == 0) {
        *hidden = 1;
    } else if (last[A_STYLE] >= 0) {
        PyObject *style = attr_str(b, last[A_STYLE]);
        if (!style) return -1;
        PyObject *found = PyObject_CallOneArg(judge[J_HIDDEN_SEARCH], style);
        Py_DECREF(style);
        if (!found) return -1;
        *hidden = found != Py_None;
        Py_DECREF(found);
    }
    int strong_role = 0;
    if (last[A_ROLE] >= 0) {
        PyObject *role = attr_str(b, last[A_ROLE]);
        if (!role) return -1;
        strong_role = set_contains(J_STRONG_ROLES, role);
        Py_DECREF(role);
        if (strong_role < 0) return -1;
    }
    if (entry->strong || strong_role) {
        *mark = STRONG_MARK;
        return 0;
    }
    if (entry->page) {  /* their classes describe the page, not a region */
        *mark = NO_MARK;
        return 0;
    }
    *mark = entry->weak ? WEAK_MARK : NO_MARK;
    Py_ssize_t values[2] = {last[A_CLASS], last[A_ID]};
    for (int v = 0; v < 2; v++) {
        if (values[v] < 0 || b->a_len.data[values[v]] == 0) continue;
        int m = value_mark(b, values[v]);
        if (m < 0) return -1;
        if (m > *mark) *mark = m;
    }
    return 0;
}

/* (blocks, parents, marks, hidden) of a finished parse. */
static PyObject *builder_result(Builder *b) {
    Py_ssize_t n = b->parent.len;
    PyObject *parents = PyList_New(n), *marks = PyList_New(n), *hidden = PyList_New(n);
    if (!parents || !marks || !hidden) goto fail;
    for (Py_ssize_t node = 0; node < n; node++) {
        PyObject *up = PyLong_FromSsize_t(b->parent.data[node]);
        if (!up) goto fail;
        PyList_SET_ITEM(parents, node, up);
        Py_ssize_t first = b->attr_begin.data[node];
        Py_ssize_t end = node + 1 < n ? b->attr_begin.data[node + 1] : b->a_code.len;
        int mark, is_hidden;
        if (judge_node(b, node, first, end, &mark, &is_hidden) < 0) goto fail;
        PyObject *mark_obj = PyLong_FromLong(mark);
        if (!mark_obj) goto fail;
        PyList_SET_ITEM(marks, node, mark_obj);
        PyObject *hidden_obj = is_hidden ? Py_True : Py_False;
        Py_INCREF(hidden_obj);
        PyList_SET_ITEM(hidden, node, hidden_obj);
    }
    PyObject *result = PyTuple_Pack(4, b->blocks, parents, marks, hidden);
    Py_DECREF(parents);
    Py_DECREF(marks);
    Py_DECREF(hidden);
    return result;
fail:
    Py_XDECREF(parents);
    Py_XDECREF(marks);
    Py_XDECREF(hidden);
    return NULL;
}

static PyObject *linearize(PyObject *module, PyObject *args) {
    (void)module;
    const char *data;
    Py_ssize_t size, max_depth;
    if (!PyArg_ParseTuple(args, "y#n:linearize", &data, &size, &max_depth)) return NULL;
    if (!tag_kinds) {
        PyErr_SetString(PyExc_RuntimeError, "_htmlblocks.configure() was not called");
        return NULL;
    }
    if (size > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "page too large for libxml2 (over 2 GiB)");
        return NULL;
    }
    if (tag_count > TAG_SLOTS / 2) tags_clear();
    Builder b = {0};
    b.max_depth = max_depth;
    b.last_block_node = -1;
    b.blocks = PyList_New(0);
    if (!b.blocks || ints_push(&b.path, -1) < 0 || ints_push(&b.owner, -1) < 0) {
        builder_free(&b);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    htmlParserCtxtPtr ctxt = p_htmlCreateMemoryParserCtxt("dummy", 5);
    if (!ctxt) { builder_free(&b); return PyErr_NoMemory(); }
    b.ctxt = ctxt;
    xmlSAXHandler *sax = ctxt->sax;  /* as lxml's _registerHtmlErrorHandler and _connectTarget */
    sax->initialized = XML_SAX2_MAGIC;
    sax->serror = on_error;
    sax->startElementNs = NULL;
    sax->endElementNs = NULL;
    sax->_private = NULL;
    sax->startElement = on_start;
    sax->endElement = on_end;
    sax->characters = on_data;
    sax->cdataBlock = on_data;
    sax->processingInstruction = NULL;
    sax->comment = NULL;
    sax->reference = NULL;
    ctxt->replaceEntities = 1;
    ctxt->_private = &b;
    htmlDocPtr doc = p_htmlCtxtReadMemory(ctxt, data, (int)size, NULL, "utf-8", PARSE_OPTIONS);
    if (doc) p_xmlFreeDoc(doc);
    p_htmlFreeParserCtxt(ctxt);
    if (!b.stopped && b.has_text) flush(&b);
    PyObject *result;
    if (b.failed) result = NULL;
    else if (b.too_deep) { result = Py_None; Py_INCREF(result); }
    else if (b.not_utf8) { result = Py_False; Py_INCREF(result); }
    else if (b.overflow) { result = Py_NotImplemented; Py_INCREF(result); }
    else result = builder_result(&b);
    if (!result && !PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "linearize failed");
    builder_free(&b);
    return result;
}

/* configure(tag_kind: dict, etree_path: str, judge: tuple): bind to lxml's libxml2, learn the
 * tag kinds and what the marks are judged with (see `judge` above). */
static PyObject *configure(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *kinds, *judged;
    const char *path;
    if (!PyArg_ParseTuple(args, "O!sO!:configure", &PyDict_Type, &kinds, &path, &PyTuple_Type, &judged))
        return NULL;
    if (PyTuple_GET_SIZE(judged) != N_JUDGE) {
        PyErr_Format(PyExc_ValueError, "configure: judge needs %d items", N_JUDGE);
        return NULL;
    }
    for (int i = 0; i < N_JUDGE; i++) {
        PyObject *item = PyTuple_GET_ITEM(judged, i);
        int ok = i == J_TAG_MARKS || i == J_MARK_CACHE ? PyDict_Check(item)
               : i == J_ATTR_MARK || i == J_HIDDEN_SEARCH ? PyCallable_Check(item) : PyAnySet_Check(item);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "configure: judge item %d has the wrong type", i);
            return NULL;
        }
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!lib) {
        PyErr_Format(PyExc_ImportError, "lxml's etree module is not loaded: %s", dlerror());
        return NULL;
    }
    p_htmlCreateMemoryParserCtxt = dlsym(lib, "htmlCreateMemoryParserCtxt");
    p_htmlCtxtReadMemory = dlsym(lib, "htmlCtxtReadMemory");
    p_htmlFreeParserCtxt = dlsym(lib, "htmlFreeParserCtxt");
    p_xmlStopParser = dlsym(lib, "xmlStopParser");
    p_xmlFreeDoc = dlsym(lib, "xmlFreeDoc");
    if (!p_htmlCreateMemoryParserCtxt || !p_htmlCtxtReadMemory || !p_htmlFreeParserCtxt
            || !p_xmlStopParser || !p_xmlFreeDoc) {
        PyErr_SetString(PyExc_ImportError, "lxml's etree module does not export libxml2");
        return NULL;
    }
    tags_clear();
    for (int i = 0; i < N_JUDGE; i++) {
        Py_INCREF(PyTuple_GET_ITEM(judged, i));
        Py_XSETREF(judge[i], PyTuple_GET_ITEM(judged, i));
    }
    Py_XDECREF(tag_kinds);
    tag_kinds = PyDict_Copy(kinds);
    if (!tag_kinds) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"linearize", linearize, METH_VARARGS, "Cut a UTF-8 page into blocks (see the module)."},
    {"configure", configure, METH_VARARGS, "Bind to lxml's libxml2 and set the tag kinds."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_htmlblocks", "Step 1 of the fast extractor, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__htmlblocks(void) {
    if (PyType_Ready(&BlockType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (!module) return NULL;
    body_str = PyUnicode_InternFromString("body");
    Py_INCREF(&BlockType);
    if (PyModule_AddObject(module, "Block", (PyObject *)&BlockType) < 0
            || PyModule_AddIntConstant(module, "LIBXML_VERSION", LIBXML_VERSION) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
