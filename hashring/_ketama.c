/* hashring._ketama: ketama key lookups in C, md5 from OpenSSL's libcrypto.
 *
 * A Continuum holds a ring's sorted uint32 points, the owner index of each point and the owner
 * names. A key's hash is the first four bytes of md5(key) read little-endian; its owner is the owner
 * of the first point >= hash, or of the first point when the hash is above the last one. This is the
 * same lower-bound search as hashring/ring.py (bisect_left / searchsorted side="left"), so both
 * paths give identical answers. str keys are hashed as UTF-8, bytes-like keys as their bytes; with
 * cstring set (libketama) only the bytes before the first NUL are hashed, as strlen() would.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
/* MD5() and MD5_Transform() are deprecated in OpenSSL 3 in favour of EVP, whose per-digest set-up
 * costs about a third more than the digest itself on a short key */
#define OPENSSL_API_COMPAT 0x10100000L
#include <openssl/md5.h>
#include <stdint.h>
#include <string.h>

/* below this many keys the GIL hand-off costs more than it lets other threads do */
#define RELEASE_GIL_FROM 1024
/* the longest message whose md5 padding (0x80 and a 64-bit length) fits in one 64-byte block */
#define SINGLE_BLOCK (MD5_CBLOCK - 9)

typedef struct {
    PyObject_HEAD
    Py_buffer points_view;
    Py_buffer owners_view;
    const uint32_t *points;
    const int32_t *owners;
    Py_ssize_t count;
    uint32_t *bucket;  /* bucket[b]: index of the first point >= b << shift; bucket[1 << bits] = count */
    int shift;         /* 32 - bits */
    PyObject *names; /* tuple */
    int cstring;
} Continuum;

static int
format_is(const Py_buffer *view, const char *codes)
{
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<')
        f++;
    return f[0] != '\0' && f[1] == '\0' && strchr(codes, f[0]) != NULL && view->itemsize == 4;
}

static int
Continuum_init(Continuum *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"points", "owners", "names", "cstring", NULL};
    PyObject *points, *owners, *names;
    Py_buffer pv, ov;
    int cstring = 0;
    if (self->names != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Continuum is immutable: it cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!|p:Continuum", kwlist, &points, &owners,
                                     &PyTuple_Type, &names, &cstring))
        return -1;
    if (PyObject_GetBuffer(points, &pv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (PyObject_GetBuffer(owners, &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&pv);
        return -1;
    }
    const uint32_t *pts = pv.buf;
    const int32_t *own = ov.buf;
    Py_ssize_t count = pv.len / 4;
    if (!format_is(&pv, "IL")) {
        PyErr_SetString(PyExc_TypeError, "points must be a contiguous buffer of uint32");
        goto fail;
    }
    if (!format_is(&ov, "il")) {
        PyErr_SetString(PyExc_TypeError, "owners must be a contiguous buffer of int32");
        goto fail;
    }
    if (count > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many points");
        goto fail;
    }
    if (ov.len / 4 != count) {
        PyErr_SetString(PyExc_ValueError, "points and owners differ in length");
        goto fail;
    }
    /* checked once here so that lookups can index without bounds checks */
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i > 0 && pts[i] < pts[i - 1]) {
            PyErr_SetString(PyExc_ValueError, "points must be sorted");
            goto fail;
        }
        if (own[i] < 0 || own[i] >= PyTuple_GET_SIZE(names)) {
            PyErr_SetString(PyExc_ValueError, "an owner index is outside names");
            goto fail;
        }
    }
    /* about four buckets per point (at most 2^16), so a lookup scans ~0.25 points of its bucket */
    int bits = 1;
    while (bits < 16 && ((Py_ssize_t)1 << bits) < count * 4)
        bits++;
    uint32_t *bucket = PyMem_Malloc((((size_t)1 << bits) + 1) * sizeof(uint32_t));
    if (bucket == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t at = 0;
    for (uint64_t b = 0; b < ((uint64_t)1 << bits); b++) {
        uint64_t floor = b << (32 - bits);
        while (at < count && pts[at] < floor)
            at++;
        bucket[b] = (uint32_t)at;
    }
    bucket[(size_t)1 << bits] = (uint32_t)count;
    self->bucket = bucket;
    self->shift = 32 - bits;
    self->points_view = pv;
    self->owners_view = ov;
    self->points = pts;
    self->owners = own;
    self->count = count;
    self->cstring = cstring;
    self->names = Py_NewRef(names);
    return 0;
fail:
    PyBuffer_Release(&pv);
    PyBuffer_Release(&ov);
    return -1;
}

static void
Continuum_dealloc(Continuum *self)
{
    if (self->names != NULL) {
        PyBuffer_Release(&self->points_view);
        PyBuffer_Release(&self->owners_view);
        PyMem_Free(self->bucket);
        Py_CLEAR(self->names);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Index of the point that owns `hash`: the first point >= hash, wrapping to 0 past the last.
 * The bucket of the hash's top bits narrows the search to the points sharing those bits, a fraction
 * of one on average: a binary search would chain a dozen dependent loads per key. */
static inline Py_ssize_t
owner_point(const Continuum *self, uint32_t hash)
{
    uint32_t b = hash >> self->shift;
    Py_ssize_t at = self->bucket[b], end = self->bucket[b + 1];
    while (at < end && self->points[at] < hash)
        at++;
    return at == self->count ? 0 : at;
}

/* md5 of the key (up to its first NUL with cstring), first four digest bytes little-endian. */
static inline uint32_t
ketama_hash(const char *data, Py_ssize_t len, int cstring)
{
    unsigned char digest[MD5_DIGEST_LENGTH];
    if (cstring) {
        const char *nul = memchr(data, 0, (size_t)len);
        if (nul != NULL)
            len = nul - data;
    }
    if (len <= SINGLE_BLOCK) {
        /* one padded block through the compression function, skipping MD5()'s buffering */
        unsigned char block[MD5_CBLOCK] = {0};
        uint64_t bits = (uint64_t)len * 8;
        MD5_CTX ctx = {.A = 0x67452301, .B = 0xefcdab89, .C = 0x98badcfe, .D = 0x10325476};
        memcpy(block, data, (size_t)len);
        block[len] = 0x80;
        for (int i = 0; i < 8; i++)
            block[56 + i] = (unsigned char)(bits >> (8 * i));
        MD5_Transform(&ctx, block);
        return (uint32_t)ctx.A; /* the digest's first word, as MD5_Final stores it little-endian */
    }
    MD5((const unsigned char *)data, (size_t)len, digest);
    return (uint32_t)digest[0] | (uint32_t)digest[1] << 8 | (uint32_t)digest[2] << 16 |
           (uint32_t)digest[3] << 24;
}

/* The bytes to hash for `key`, valid while the GIL is held: a str's UTF-8 or a bytes' buffer, or
 * for a bytearray/memoryview a bytes copy returned in *copy (a new reference, else NULL). */
static int
key_bytes(PyObject *key, const char **data, Py_ssize_t *len, PyObject **copy)
{
    *copy = NULL;
    if (PyUnicode_Check(key)) {
        *data = PyUnicode_AsUTF8AndSize(key, len);
        return *data == NULL ? -1 : 0;
    }
    if (PyByteArray_Check(key) || PyMemoryView_Check(key)) {
        *copy = PyBytes_FromObject(key);
        if (*copy == NULL)
            return -1;
        key = *copy;
    }
    else if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "keys are str or bytes, got %.200s", Py_TYPE(key)->tp_name);
        return -1;
    }
    *data = PyBytes_AS_STRING(key);
    *len = PyBytes_GET_SIZE(key);
    return 0;
}

static PyObject *
empty_error(void)
{
    PyErr_SetString(PyExc_IndexError, "the continuum has no points");
    return NULL;
}

static PyObject *
Continuum_node_for(Continuum *self, PyObject *key)
{
    const char *data;
    Py_ssize_t len;
    PyObject *copy;
    if (self->count == 0)
        return empty_error();
    if (key_bytes(key, &data, &len, &copy) < 0)
        return NULL;
    uint32_t hash = ketama_hash(data, len, self->cstring);
    Py_XDECREF(copy);
    Py_ssize_t at = owner_point(self, hash);
    return Py_NewRef(PyTuple_GET_ITEM(self->names, self->owners[at]));
}

static PyObject *
Continuum_nodes_for(Continuum *self, PyObject *keys)
{
    if (self->count == 0)
        return empty_error();
    PyObject *seq = PySequence_Fast(keys, "keys must be an iterable of str or bytes");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t slots = (size_t)n + 1, cap = (size_t)n * 32 + 64, used = 0;
    /* the keys' bytes copied end to end: the hashing loop then needs no object (so no GIL) and reads
     * memory in order, where following each key's pointer again would miss the cache once more */
    char *arena = PyMem_Malloc(cap);
    size_t *ends = PyMem_Malloc(slots * sizeof(size_t));
    int32_t *owner = PyMem_Malloc(slots * sizeof(int32_t));
    PyObject *result = NULL;
    if (arena == NULL || ends == NULL || owner == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *data;
        Py_ssize_t len;
        PyObject *copy;
        if (key_bytes(PySequence_Fast_GET_ITEM(seq, i), &data, &len, &copy) < 0)
            goto done;
        if (used + (size_t)len > cap) {
            size_t grown = (used + (size_t)len) * 2;
            char *bigger = PyMem_Realloc(arena, grown);
            if (bigger == NULL) {
                Py_XDECREF(copy);
                PyErr_NoMemory();
                goto done;
            }
            arena = bigger;
            cap = grown;
        }
        memcpy(arena + used, data, (size_t)len);
        used += (size_t)len;
        ends[i] = used;
        Py_XDECREF(copy);
    }
    PyThreadState *released = n >= RELEASE_GIL_FROM ? PyEval_SaveThread() : NULL;
    size_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t hash = ketama_hash(arena + start, (Py_ssize_t)(ends[i] - start), self->cstring);
        owner[i] = self->owners[owner_point(self, hash)];
        start = ends[i];
    }
    if (released != NULL)
        PyEval_RestoreThread(released);
    result = PyList_New(n);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        PyList_SET_ITEM(result, i, Py_NewRef(PyTuple_GET_ITEM(self->names, owner[i])));
done:
    PyMem_Free(arena);
    PyMem_Free(ends);
    PyMem_Free(owner);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef Continuum_methods[] = {
    {"node_for", (PyCFunction)Continuum_node_for, METH_O,
     "node_for(key) -> name\n\nThe owner of one key (str as UTF-8, or bytes-like)."},
    {"nodes_for", (PyCFunction)Continuum_nodes_for, METH_O,
     "nodes_for(keys) -> list of names\n\nOwners of many keys, in order; the GIL is released while "
     "large batches are hashed."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ContinuumType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hashring._ketama.Continuum",
    .tp_doc = PyDoc_STR("Continuum(points, owners, names, cstring=False)\n\n"
                        "Immutable ketama lookups over sorted uint32 `points`, int32 `owners` (an "
                        "index into the tuple `names` per point). `cstring` hashes keys up to their "
                        "first NUL byte (libketama)."),
    .tp_basicsize = sizeof(Continuum),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Continuum_init,
    .tp_dealloc = (destructor)Continuum_dealloc,
    .tp_methods = Continuum_methods,
};

static struct PyModuleDef ketama_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hashring._ketama",
    .m_doc = "Ketama key lookups in C (md5 from OpenSSL); the pure-Python ring is the reference.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__ketama(void)
{
    if (PyType_Ready(&ContinuumType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&ketama_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Continuum", (PyObject *)&ContinuumType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
