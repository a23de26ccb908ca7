/* launcher.archive._tarwalk: the fast path of launcher.archive.tarscan's header walk.
 *
 * It walks runs of PLAIN tar members -- a regular file (type '0', NUL or '7') whose header passes
 * its checksum, whose size is octal digits, whose data lies inside the region, and whose name (with
 * the POSIX prefix) is printable ASCII -- and stops at the first header that is anything else: the
 * end-of-archive block, a pax or GNU long-name header, a link, a directory, a bad checksum, a size
 * that is not octal, a member that runs past the region, a name with other bytes. The Python walk
 * (tarscan.step) then reads that header with every rule and refusal it has; what this file accepts
 * is exactly what the Python walk accepts with the same result, so the two cannot disagree (a test
 * compares them on fuzzed headers). With `plain_names`, a name that is not a plain file name (a
 * '/', "." or "..", more than 255 bytes) also stops the run, so callers that refuse such names get
 * the refusal from the Python walk.
 *
 *   walk_buffer(buf, buf_start, pos, end, stop, plain_names, max_members)
 *       headers read from `buf`, which holds the file's bytes [buf_start, buf_start + len(buf))
 *   walk_fd(fd, pos, end, stop, plain_names, max_members)
 *       headers read with pread: 64 KiB at a time while members are small, 512 bytes per header
 *       once they are large (the data between headers is not read)
 *
 * Both return (names: list[str], offsets: bytes, sizes: bytes, next_pos: int, status: int):
 * native int64 arrays of data offsets and sizes, the header position where the walk stopped, and
 * why: 0 the region ends (no room for a header), 1 a zero block, 2 a header the Python walk must
 * read, 3 the header is not in the buffer (walk_buffer), 4 max_members reached or `stop` passed (no
 * header at or after `stop` is read; `end` still bounds the members' data), 5 a read failed or
 * came back short (walk_fd; the Python walk reads it again and says what happened).
 * Every step advances by at least one 512-byte block; nothing is allocated from a header's claims.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 512
#define READ_AHEAD (64 * 1024)
#define SMALL_MEMBER (32 * 1024)
#define MAX_NAME 256 /* prefix (155) + '/' + name (100) */

enum { AT_END = 0, ZERO = 1, OTHER = 2, NEED = 3, FULL = 4, READ_FAILED = 5 };

typedef struct {
    char (*names)[MAX_NAME + 1];
    int64_t *offsets, *sizes;
    Py_ssize_t n, cap;
} Run;

static int run_push(Run *run, const char *name, int64_t offset, int64_t size) {
    if (run->n == run->cap) {
        Py_ssize_t cap = run->cap ? run->cap * 2 : 1024;
        void *names = realloc(run->names, (size_t)cap * sizeof(*run->names));
        if (!names) return -1;
        run->names = names;
        void *offsets = realloc(run->offsets, (size_t)cap * sizeof(int64_t));
        if (!offsets) return -1;
        run->offsets = offsets;
        void *sizes = realloc(run->sizes, (size_t)cap * sizeof(int64_t));
        if (!sizes) return -1;
        run->sizes = sizes;
        run->cap = cap;
    }
    strcpy(run->names[run->n], name);
    run->offsets[run->n] = offset;
    run->sizes[run->n] = size;
    run->n++;
    return 0;
}

static void run_free(Run *run) {
    free(run->names);
    free(run->offsets);
    free(run->sizes);
}

/* tarscan.octal: digits up to the first NUL, spaces stripped at both ends, only 0-7 (none: 0).
   -1 for anything else, and for base-256 (first byte 0x80), which the Python walk reads. */
static int64_t octal(const unsigned char *field, int len) {
    if (field[0] == 0x80) return -1;
    int end = 0;
    while (end < len && field[end] != 0) end++;
    int lo = 0, hi = end;
    while (lo < hi && field[lo] == ' ') lo++;
    while (hi > lo && field[hi - 1] == ' ') hi--;
    int64_t value = 0;
    for (int i = lo; i < hi; i++) {
        if (field[i] < '0' || field[i] > '7') return -1;
        value = value * 8 + (field[i] - '0');
    }
    return value;
}

/* tarscan.check_checksum: the unsigned sum with the checksum field as spaces, or the signed sum. */
static int checksum_ok(const unsigned char *h) {
    int64_t stored = octal(h + 148, 8);
    int64_t unsigned_sum = 8 * 32, signed_sum = 8 * 32;
    for (int i = 0; i < BLOCK; i++) {
        if (i >= 148 && i < 156) continue;
        unsigned_sum += h[i];
        signed_sum += (signed char)h[i];
    }
    return stored >= 0 && (stored == unsigned_sum || stored == signed_sum);
}

static int is_zero(const unsigned char *h) {
    for (int i = 0; i < BLOCK; i++)
        if (h[i]) return 0;
    return 1;
}

/* Copy the NUL-terminated text of a field; 0 if it holds a byte outside printable ASCII. */
static int ascii_text(const unsigned char *field, int len, char *out, int *out_len) {
    int n = 0;
    while (n < len && field[n] != 0) {
        if (field[n] < 0x20 || field[n] > 0x7e) return 0;
        out[n] = (char)field[n];
        n++;
    }
    out[n] = 0;
    *out_len = n;
    return 1;
}

/* tarscan.header_name, printable ASCII only; 0 if the name is not accepted here. */
static int header_name(const unsigned char *h, int plain_names, char *name) {
    char prefix[156], base[101];
    int prefix_len = 0, base_len = 0;
    if (!ascii_text(h, 100, base, &base_len)) return 0;
    if (memcmp(h + 257, "ustar\0" "00", 8) == 0 && !ascii_text(h + 345, 155, prefix, &prefix_len)) return 0;
    int len = base_len;
    if (prefix_len) {
        memcpy(name, prefix, prefix_len);
        name[prefix_len] = '/';
        memcpy(name + prefix_len + 1, base, base_len + 1);
        len = prefix_len + 1 + base_len;
    } else {
        memcpy(name, base, base_len + 1);
    }
    if (len == 0) return 0;
    if (plain_names && (strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || len > 255))
        return 0;
    return 1;
}

/* One header at `pos`: OTHER/ZERO, or -1 with the member pushed and *next set. */
static int plain_member(const unsigned char *h, int64_t pos, int64_t end, int plain_names, Run *run,
                        int64_t *next, int64_t *size_out) {
    if (is_zero(h)) return ZERO;
    if (!checksum_ok(h)) return OTHER;
    unsigned char type = h[156];
    if (type != '0' && type != 0 && type != '7') return OTHER;
    int64_t size = octal(h + 124, 12);
    if (size < 0) return OTHER;
    int64_t data_at = pos + BLOCK;
    if (data_at + size > end) return OTHER;
    char name[MAX_NAME + 1];
    if (!header_name(h, plain_names, name)) return OTHER;
    if (run_push(run, name, data_at, size) < 0) return -2;
    *next = data_at + (size + BLOCK - 1) / BLOCK * BLOCK;
    *size_out = size;
    return -1;
}

static PyObject *run_result(Run *run, int64_t pos, int status) {
    PyObject *names = PyList_New(run->n);
    if (!names) return NULL;
    for (Py_ssize_t i = 0; i < run->n; i++) {
        PyObject *s = PyUnicode_DecodeASCII(run->names[i], (Py_ssize_t)strlen(run->names[i]), "strict");
        if (!s) {
            Py_DECREF(names);
            return NULL;
        }
        PyList_SET_ITEM(names, i, s);
    }
    return Py_BuildValue("(Ny#y#Li)", names, (const char *)run->offsets, (Py_ssize_t)(run->n * sizeof(int64_t)),
                         (const char *)run->sizes, (Py_ssize_t)(run->n * sizeof(int64_t)), (long long)pos, status);
}

static PyObject *walk_buffer(PyObject *self, PyObject *args) {
    Py_buffer view;
    long long buf_start, pos, end, stop;
    int plain_names;
    Py_ssize_t max_members;
    if (!PyArg_ParseTuple(args, "y*LLLLpn", &view, &buf_start, &pos, &end, &stop, &plain_names, &max_members))
        return NULL;
    Run run = {0};
    int status = AT_END, failed = 0;
    const unsigned char *buf = view.buf;
    int64_t buf_end = buf_start + view.len;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        if (pos + BLOCK > end) { status = AT_END; break; }
        if (run.n >= max_members || pos >= stop) { status = FULL; break; }
        if (pos < buf_start || pos + BLOCK > buf_end) { status = NEED; break; }
        int64_t next, size;
        int r = plain_member(buf + (pos - buf_start), pos, end, plain_names, &run, &next, &size);
        if (r == -2) { failed = 1; break; }
        if (r >= 0) { status = r; break; }
        pos = next;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *result = failed ? PyErr_NoMemory() : run_result(&run, pos, status);
    run_free(&run);
    return result;
}

static PyObject *walk_fd(PyObject *self, PyObject *args) {
    int fd, plain_names;
    long long pos, end, stop;
    Py_ssize_t max_members;
    if (!PyArg_ParseTuple(args, "iLLLpn", &fd, &pos, &end, &stop, &plain_names, &max_members)) return NULL;
    unsigned char *buf = malloc(READ_AHEAD);
    if (!buf) return PyErr_NoMemory();
    Run run = {0};
    int status = AT_END, failed = 0;
    int64_t buf_start = 0, buf_len = 0, last_size = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        if (pos + BLOCK > end) { status = AT_END; break; }
        if (run.n >= max_members || pos >= stop) { status = FULL; break; }
        if (pos < buf_start || pos + BLOCK > buf_start + buf_len) {
            int64_t want = last_size <= SMALL_MEMBER ? READ_AHEAD : BLOCK;
            if (want > end - pos) want = end - pos;
            int64_t got = 0;
            while (got < want) {
                ssize_t r = pread(fd, buf + got, (size_t)(want - got), (off_t)(pos + got));
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) break;
                got += r;
            }
            if (got < BLOCK) { status = READ_FAILED; break; }
            buf_start = pos;
            buf_len = got;
        }
        int64_t next, size;
        int r = plain_member(buf + (pos - buf_start), pos, end, plain_names, &run, &next, &size);
        if (r == -2) { failed = 1; break; }
        if (r >= 0) { status = r; break; }
        pos = next;
        last_size = size;
    }
    Py_END_ALLOW_THREADS
    free(buf);
    PyObject *result = failed ? PyErr_NoMemory() : run_result(&run, pos, status);
    run_free(&run);
    return result;
}

static PyMethodDef methods[] = {
    {"walk_buffer", walk_buffer, METH_VARARGS, "Plain members of a tar region, headers read from a buffer."},
    {"walk_fd", walk_fd, METH_VARARGS, "Plain members of a tar region, headers read with pread."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tarwalk", "The C fast path of tarscan's header walk.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__tarwalk(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "AT_END", AT_END) || PyModule_AddIntConstant(m, "ZERO", ZERO) ||
        PyModule_AddIntConstant(m, "OTHER", OTHER) || PyModule_AddIntConstant(m, "NEED", NEED) ||
        PyModule_AddIntConstant(m, "FULL", FULL) || PyModule_AddIntConstant(m, "READ_FAILED", READ_FAILED)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
