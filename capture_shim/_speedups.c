/*
 * capture_shim._speedups: the shim's hot path in C.
 *
 * `Lines` is capture_shim/lines.py's `Lines`, and `RouterBase` its `RouterBase`, rule for rule
 * (that module says what the rules are; tests/unit/test_speedups.py checks the two classes
 * write the same records byte for byte). What C saves is Python's per-call overhead: a `print`
 * inside a task comes here twice (the text, then "\n") and leaves with one write(2).
 *
 * Locking: every call runs holding the GIL and runs no Python code, so it is atomic with
 * respect to the other threads (the fd capture reader's `feed`), except where it calls out:
 * the gate's `take_in` (before touching any state) and `_unwritten` (after it). write(2) on
 * the spool file is made without releasing the GIL: an append to a local file, like the lock
 * the Python class holds around it.
 *
 * The collector's side of the same records lives here too (one optional extension to build):
 * `read_lines` reads them back into lines and `copy_rows` makes binary COPY rows of lines, each
 * the C twin of a Python function it is tested against (collector.records, collector.copydata).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* What Python calls here, numbered: capture_shim/native.py uses this module only when its
 * ABI is this one. Raise both together whenever a function's arguments, a type's fields or
 * methods that Python uses, or a record's shape change. */
#define SPEEDUPS_ABI 1
#include <structmember.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

static PyObject *s_write, *s_newline, *s_empty, *s_take_in, *s_read_ends, *s_unwritten,
    *s_ellipsis, *s_probe_fd;

/* -- the record ------------------------------------------------------------------------------ */

static const char HEX[] = "0123456789abcdef";

/* The most bytes one code point takes in a record: "\u001f", or a lone surrogate's "\udc80". */
#define MAX_BYTES_PER_CHAR 6

/* An ASCII character that JSON writes escaped: a control character, '"' or '\\'. */
static char *
put_escape(char *p, Py_UCS4 c)
{
    *p++ = '\\';
    switch (c) {
    case '"': *p++ = '"'; break;
    case '\\': *p++ = '\\'; break;
    case '\n': *p++ = 'n'; break;
    case '\r': *p++ = 'r'; break;
    case '\t': *p++ = 't'; break;
    case '\b': *p++ = 'b'; break;
    case '\f': *p++ = 'f'; break;
    default:
        *p++ = 'u';
        *p++ = '0';
        *p++ = '0';
        *p++ = HEX[c >> 4];
        *p++ = HEX[c & 15];
    }
    return p;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether one of eight ASCII bytes needs escaping: below 0x20, '"' or '\\' (each test exact
 * as a whole: a borrow only runs on from a byte that matched). */
static inline int
any_escape8(uint64_t x)
{
    uint64_t quote = x ^ (ONES * '"'), slash = x ^ (ONES * '\\');
    return ((((x - ONES * 0x20) & ~x) | ((quote - ONES) & ~quote) | ((slash - ONES) & ~slash))
            & HIGHS)
           != 0;
}

/* `text` as JSON string content, UTF-8: json.encoder.encode_basestring, then encoding with
 * "backslashreplace" (a lone surrogate becomes the six characters \udXXX). The buffer has
 * room for MAX_BYTES_PER_CHAR bytes a character. */
static char *
put_text(char *p, PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_IS_ASCII(text)) { /* most lines: copied eight bytes at a time */
        const unsigned char *s = PyUnicode_1BYTE_DATA(text), *end = s + n;
        while (s < end) {
            const unsigned char *stop = end;
            if (end - s >= 8) {
                uint64_t x;
                memcpy(&x, s, 8);
                if (!any_escape8(x)) {
                    memcpy(p, &x, 8);
                    p += 8;
                    s += 8;
                    continue;
                }
                stop = s + 8; /* these eight one by one */
            }
            while (s < stop) {
                unsigned char c = *s++;
                if (c >= 0x20 && c != '"' && c != '\\')
                    *p++ = (char)c;
                else
                    p = put_escape(p, c);
            }
        }
        return p;
    }
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *p++ = (char)c;
        }
        else if (c < 0x80) {
            p = put_escape(p, c);
        }
        else if (c < 0x800) {
            *p++ = (char)(0xc0 | (c >> 6));
            *p++ = (char)(0x80 | (c & 0x3f));
        }
        else if (c >= 0xd800 && c <= 0xdfff) {
            *p++ = '\\';
            *p++ = 'u';
            *p++ = HEX[c >> 12];
            *p++ = HEX[(c >> 8) & 15];
            *p++ = HEX[(c >> 4) & 15];
            *p++ = HEX[c & 15];
        }
        else if (c < 0x10000) {
            *p++ = (char)(0xe0 | (c >> 12));
            *p++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *p++ = (char)(0x80 | (c & 0x3f));
        }
        else {
            *p++ = (char)(0xf0 | (c >> 18));
            *p++ = (char)(0x80 | ((c >> 12) & 0x3f));
            *p++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *p++ = (char)(0x80 | (c & 0x3f));
        }
    }
    return p;
}

/* A string literal's bytes, its length known when compiled. */
#define PUT_LITERAL(p, literal) \
    (memcpy((p), (literal), sizeof(literal) - 1), (p) + sizeof(literal) - 1)

/* "00" to "99": two digits at a time. */
static const char DIGIT_PAIRS[] =
    "0001020304050607080910111213141516171819"
    "2021222324252627282930313233343536373839"
    "4041424344454647484950515253545556575859"
    "6061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static char *
put_uint(char *p, unsigned long long v)
{
    char digits[24], *end = digits + sizeof(digits), *q = end;
    while (v >= 100) {
        q -= 2;
        memcpy(q, DIGIT_PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        q -= 2;
        memcpy(q, DIGIT_PAIRS + 2 * v, 2);
    }
    else
        *--q = (char)('0' + v);
    memcpy(p, q, (size_t)(end - q));
    return p + (end - q);
}

/* -- Lines ----------------------------------------------------------------------------------- */

/* One stream's line state, held in the object itself for the first streams written to (stdout
 * and stderr in a task): no dict or set operation on the hot path. */
typedef struct {
    PyObject *stream;  /* NULL: a free slot */
    PyObject *partial; /* the text of a line not ended yet ("" if none) */
    char open;         /* its Python-level line is open (with a gate) */
} Slot;

/* The streams held in slots; any further one's state is in the `partial` dict and `open` set.
 * Slots are taken in the order streams are first written to, and given up together by
 * flush_partials, so slots then dict is the order the reference's dict keeps. */
#define SLOTS 3

typedef struct {
    PyObject_HEAD
    int fd;                    /* the spool file, -1 while there is none */
    long long seq;             /* the last line's sequence number */
    Py_ssize_t max_line_bytes; /* longest line kept, in UTF-8 bytes */
    Py_ssize_t cut_at;         /* lines longer than this many characters may be over it */
    Py_ssize_t max_partial;    /* text without its newline is let go past this many */
    Slot slots[SLOTS];         /* the first streams' state */
    int used;                  /* slots taken */
    PyObject *partial;         /* dict: stream -> the text of a line not ended yet */
    PyObject *open;            /* set: streams whose Python-level line is open (with a gate) */
    PyObject *gate;            /* NULL, or fd capture's side */
    int probe_fd;              /* the gate's `probe_fd`, read once by order_with */
    char gate_pending;         /* `gate_pending`: the gate's reader holds output undelivered */
    PyObject *route;           /* NULL: straight into `write`; else what route_through set */
} LinesObject;

static PyTypeObject LinesType;

static int
lines_traverse(LinesObject *self, visitproc visit, void *arg)
{
    for (int i = 0; i < self->used; i++) {
        Py_VISIT(self->slots[i].stream);
        Py_VISIT(self->slots[i].partial);
    }
    Py_VISIT(self->partial);
    Py_VISIT(self->open);
    Py_VISIT(self->gate);
    Py_VISIT(self->route);
    return 0;
}

static int
lines_clear(LinesObject *self)
{
    for (; self->used > 0; self->used--) {
        Py_CLEAR(self->slots[self->used - 1].stream);
        Py_CLEAR(self->slots[self->used - 1].partial);
    }
    Py_CLEAR(self->partial);
    Py_CLEAR(self->open);
    Py_CLEAR(self->gate);
    Py_CLEAR(self->route);
    return 0;
}

static void
lines_dealloc(LinesObject *self)
{
    /* A Python subclass's dealloc untracks, clears its own and drops its type around this. */
    PyObject_GC_UnTrack(self);
    lines_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
lines_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    LinesObject *self = (LinesObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->probe_fd = -1;
    self->partial = PyDict_New();
    self->open = PySet_New(NULL);
    if (self->partial == NULL || self->open == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
lines_init(LinesObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_line_bytes", NULL};
    Py_ssize_t max_line_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &max_line_bytes))
        return -1;
    if (max_line_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "max_line_bytes must be at least 1");
        return -1;
    }
    self->max_line_bytes = max_line_bytes;
    self->cut_at = max_line_bytes / 4;
    self->max_partial = max_line_bytes;
    return 0;
}

/* -- a stream's state: its slot, else the dict and the set -- */

/* The slot of `stream` (a str), NULL if it has none; with `take`, one is taken if free. */
static Slot *
slot_of(LinesObject *self, PyObject *stream, int take)
{
    for (int i = 0; i < self->used; i++)
        if (self->slots[i].stream == stream)
            return &self->slots[i];
    for (int i = 0; i < self->used; i++)
        if (PyUnicode_Compare(self->slots[i].stream, stream) == 0)
            return &self->slots[i];
    if (!take || self->used == SLOTS)
        return NULL;
    /* Not in the dict either: streams go there only once every slot is taken, and slots are
     * given up with the dict. Its open mark may be in the set (kept over flush_partials). */
    int open = PySet_GET_SIZE(self->open) ? PySet_Discard(self->open, stream) : 0;
    if (open < 0)
        return NULL;
    Slot *slot = &self->slots[self->used++];
    slot->stream = Py_NewRef(stream);
    slot->partial = Py_NewRef(s_empty);
    slot->open = (char)open;
    return slot;
}

/* The text of `stream`'s line not ended yet, borrowed; NULL without one (or with an error). */
static PyObject *
get_partial(LinesObject *self, PyObject *stream)
{
    Slot *slot = slot_of(self, stream, 0);
    if (slot != NULL)
        return slot->partial;
    return PyDict_GetItemWithError(self->partial, stream);
}

static int
set_partial(LinesObject *self, PyObject *stream, PyObject *text)
{
    Slot *slot = slot_of(self, stream, 1);
    if (slot != NULL) {
        Py_SETREF(slot->partial, Py_NewRef(text));
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    return PyDict_SetItem(self->partial, stream, text);
}

static int
is_open(LinesObject *self, PyObject *stream)
{
    Slot *slot = slot_of(self, stream, 0);
    if (slot != NULL)
        return slot->open;
    return PySet_GET_SIZE(self->open) ? PySet_Contains(self->open, stream) : 0;
}

static int
set_open(LinesObject *self, PyObject *stream, int open)
{
    Slot *slot = slot_of(self, stream, open);
    if (slot != NULL) {
        slot->open = (char)open;
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    if (open)
        return PySet_Add(self->open, stream);
    return PySet_GET_SIZE(self->open) ? (PySet_Discard(self->open, stream) < 0 ? -1 : 0) : 0;
}

/* `text` cut to at most `limit` UTF-8 bytes with how much was cut: lines.cut. New ref. */
static PyObject *
cut(PyObject *text, Py_ssize_t limit)
{
    PyObject *raw = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass");
    if (raw == NULL)
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(raw);
    if (size <= limit) {
        Py_DECREF(raw);
        return Py_NewRef(text);
    }
    PyObject *kept = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), limit, "ignore");
    Py_DECREF(raw);
    if (kept == NULL)
        return NULL;
    /* tasklog.core.constants.CUT_NOTE after the ellipsis (test_speedups compares them). */
    PyObject *note = PyUnicode_FromFormat(" [line cut: %zd more bytes]", size - limit);
    PyObject *result = NULL;
    if (note != NULL) {
        PyObject *head = PyUnicode_Concat(kept, s_ellipsis);
        if (head != NULL) {
            result = PyUnicode_Concat(head, note);
            Py_DECREF(head);
        }
        Py_DECREF(note);
    }
    Py_DECREF(kept);
    return result;
}

/* Hand a line one write(2) did not store whole to the subclass's `_unwritten`. */
static int
unwritten(LinesObject *self, PyObject *stream, PyObject *text, const char *record,
          Py_ssize_t size, Py_ssize_t written, int error)
{
    PyObject *data = NULL, *exc = NULL, *result = NULL;
    if (record != NULL) {
        data = PyBytes_FromStringAndSize(record, size);
        if (data == NULL)
            goto done;
    }
    if (error) {
        exc = PyObject_CallFunction(PyExc_OSError, "is", error, strerror(error));
        if (exc == NULL)
            goto done;
    }
    PyObject *args[] = {(PyObject *)self, stream, text, data ? data : Py_None,
                        NULL, exc ? exc : Py_None};
    args[4] = PyLong_FromSsize_t(written);
    if (args[4] == NULL)
        goto done;
    result = PyObject_VectorcallMethod(s_unwritten, args, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                       NULL);
    Py_DECREF(args[4]);
done:
    Py_XDECREF(data);
    Py_XDECREF(exc);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

#define STACK_RECORD 4096

/* One line's record, written: lines.Lines._emit. */
static int
emit(LinesObject *self, PyObject *stream, PyObject *text, PyObject *level)
{
    int status = -1;
    char stack[STACK_RECORD], *heap = NULL, *buf = stack;
    Py_INCREF(text);
    if (PyUnicode_GET_LENGTH(text) > self->cut_at) {
        Py_SETREF(text, cut(text, self->max_line_bytes));
        if (text == NULL)
            return -1;
    }
    self->seq += 1;
    Py_ssize_t need = 96 + MAX_BYTES_PER_CHAR * (PyUnicode_GET_LENGTH(text)
                                                  + PyUnicode_GET_LENGTH(stream)
                                                  + (level ? PyUnicode_GET_LENGTH(level) : 0));
    if (need > STACK_RECORD) {
        buf = heap = PyMem_Malloc(need);
        if (heap == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned long long micros =
        (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000;
    char *p = PUT_LITERAL(buf, "{\"k\":\"line\",\"n\":");
    p = put_uint(p, (unsigned long long)self->seq);
    p = PUT_LITERAL(p, ",\"t\":");
    p = put_uint(p, micros);
    p = PUT_LITERAL(p, "e-6,\"s\":\"");
    p = put_text(p, stream);
    if (level != NULL) {
        p = PUT_LITERAL(p, "\",\"l\":\"");
        p = put_text(p, level);
    }
    p = PUT_LITERAL(p, "\",\"m\":\"");
    p = put_text(p, text);
    p = PUT_LITERAL(p, "\"}\n");
    Py_ssize_t size = p - buf;

    if (self->fd < 0) {
        status = unwritten(self, stream, text, NULL, 0, 0, 0);
        goto done;
    }
    Py_ssize_t written;
    do {
        written = write(self->fd, buf, (size_t)size);
    } while (written < 0 && errno == EINTR);
    if (written == size)
        status = 0;
    else if (written < 0)
        status = unwritten(self, stream, text, buf, size, 0, errno);
    else
        status = unwritten(self, stream, text, buf, size, written, 0);
done:
    PyMem_Free(heap);
    Py_DECREF(text);
    return status;
}

/* The stream's partial line and the new text, in one string (new ref). */
static PyObject *
joined(PyObject *partial, PyObject *text)
{
    if (partial != NULL && PyUnicode_GET_LENGTH(partial) > 0)
        return PyUnicode_Concat(partial, text);
    return Py_NewRef(text);
}

/* `buf` (the stream's partial line and new text, its first newline at `nl`, -1 for none): its
 * lines out, the rest kept. */
static int
take(LinesObject *self, PyObject *stream, PyObject *buf, Py_ssize_t nl)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(buf);
    if (nl == -1) {
        if (n > self->max_partial) {
            if (set_partial(self, stream, s_empty) < 0)
                return -1;
            return emit(self, stream, buf, NULL);
        }
        return set_partial(self, stream, buf);
    }
    if (nl == n - 1) { /* one line and its newline: the common case */
        PyObject *line = PyUnicode_Substring(buf, 0, nl);
        if (line == NULL)
            return -1;
        int status = set_partial(self, stream, s_empty);
        if (status == 0)
            status = emit(self, stream, line, NULL);
        Py_DECREF(line);
        return status;
    }
    PyObject *parts = PyUnicode_Split(buf, s_newline, -1);
    if (parts == NULL)
        return -1;
    Py_ssize_t count = PyList_GET_SIZE(parts);
    int status = set_partial(self, stream, PyList_GET_ITEM(parts, count - 1));
    for (Py_ssize_t i = 0; status == 0 && i < count - 1; i++)
        status = emit(self, stream, PyList_GET_ITEM(parts, i), NULL);
    Py_DECREF(parts);
    return status;
}

/* Whether fd-level output may be waiting: a pipe readable (the epoll instance holding them,
 * `probe_fd`, else each of the gate's `read_ends` polled), or the gate's reader holding output
 * it took out of a pipe and has not delivered (`gate_pending`, read after the pipes: the reader
 * raises it before it reads). An error of the system call says yes: `take_in` looks for itself.
 */
static int
gate_waiting(LinesObject *self)
{
#ifdef __linux__
    if (self->probe_fd >= 0) {
        struct epoll_event event;
        int ready;
        do {
            ready = epoll_wait(self->probe_fd, &event, 1, 0);
        } while (ready < 0 && errno == EINTR);
        return ready != 0 || self->gate_pending;
    }
#endif
    PyObject *ends = PyObject_GetAttr(self->gate, s_read_ends);
    if (ends == NULL)
        return -1;
    struct pollfd fds[8];
    nfds_t count = 0;
    if (PyTuple_Check(ends)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ends) && count < 8; i++) {
            long fd = PyLong_AsLong(PyTuple_GET_ITEM(ends, i));
            if (fd == -1 && PyErr_Occurred()) {
                Py_DECREF(ends);
                return -1;
            }
            fds[count].fd = (int)fd;
            fds[count].events = POLLIN;
            fds[count].revents = 0;
            count++;
        }
    }
    Py_DECREF(ends);
    int ready = 0;
    if (count > 0) {
        do {
            ready = poll(fds, count, 0);
        } while (ready < 0 && errno == EINTR);
    }
    if (ready < 0)
        return 1; /* an error: look (take_in tells what is there) */
    for (nfds_t i = 0; i < count && ready > 0; i++)
        if (fds[i].revents & ~POLLNVAL)
            return 1;
    return self->gate_pending;
}

static int
is_newline(PyObject *text)
{
    return PyUnicode_GET_LENGTH(text) == 1 && PyUnicode_READ_CHAR(text, 0) == '\n';
}

static int
lines_write_text(LinesObject *self, PyObject *stream, PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "write() argument must be str, not %.100s",
                     Py_TYPE(text)->tp_name);
        return -1;
    }
    if (!PyUnicode_Check(stream)) {
        PyErr_SetString(PyExc_TypeError, "stream must be str");
        return -1;
    }
    int gated = self->gate != NULL;
    if (gated) {
        int open = is_open(self, stream);
        if (open < 0)
            return -1;
        if (!open) { /* a new line from Python: what the pipes hold was written before it */
            PyObject *gate = Py_NewRef(self->gate);
            int waiting = gate_waiting(self);
            PyObject *result = NULL;
            if (waiting > 0)
                result = PyObject_CallMethodNoArgs(gate, s_take_in);
            Py_DECREF(gate);
            if (waiting < 0 || (waiting > 0 && result == NULL))
                return -1;
            Py_XDECREF(result);
        }
    }
    int status;
    PyObject *partial = get_partial(self, stream);
    if (partial == NULL && PyErr_Occurred())
        return -1;
    Py_XINCREF(partial);
    if (!is_newline(text)) {
        /* A partial line holds no newline: only the new text is searched. */
        Py_ssize_t tn = PyUnicode_GET_LENGTH(text);
        Py_ssize_t nl = PyUnicode_FindChar(text, '\n', 0, tn, 1);
        if (nl == -2) {
            status = -1;
            goto done;
        }
        PyObject *buf = joined(partial, text);
        if (buf == NULL) {
            status = -1;
            goto done;
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(buf);
        if (nl >= 0)
            nl += n - tn;
        if (nl >= 0 || n > self->max_partial) {
            status = take(self, stream, buf, nl);
            if (status == 0 && gated && tn > 0 && PyUnicode_READ_CHAR(text, tn - 1) == '\n') {
                status = set_open(self, stream, 0);
                Py_DECREF(buf);
                goto done;
            }
        }
        else
            status = set_partial(self, stream, buf); /* kept until its newline */
        Py_DECREF(buf);
        if (status == 0 && gated)
            status = set_open(self, stream, 1);
        goto done;
    }
    /* print's last write, ending the line its first ones began */
    if (gated && set_open(self, stream, 0) < 0) {
        status = -1;
        goto done;
    }
    status = set_partial(self, stream, s_empty);
    if (status == 0)
        status = emit(self, stream, partial != NULL ? partial : s_empty, NULL);
done:
    Py_XDECREF(partial);
    return status;
}

static int
two_str(PyObject *const *args, Py_ssize_t nargs, const char *name)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    if (!PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "%s() arguments must be str", name);
        return -1;
    }
    return 0;
}

static PyObject *
lines_write(LinesObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "write() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (lines_write_text(self, args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lines_feed(LinesObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (two_str(args, nargs, "feed") < 0)
        return NULL;
    PyObject *stream = args[0], *text = args[1];
    if (set_open(self, stream, 0) < 0)
        return NULL;
    PyObject *partial = get_partial(self, stream);
    if (partial == NULL && PyErr_Occurred())
        return NULL;
    PyObject *buf = joined(partial, text);
    if (buf == NULL)
        return NULL;
    Py_ssize_t nl = PyUnicode_FindChar(buf, '\n', 0, PyUnicode_GET_LENGTH(buf), 1);
    int status = nl == -2 ? -1 : take(self, stream, buf, nl);
    Py_DECREF(buf);
    if (status < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lines_emit(LinesObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"stream", "text", "level", NULL};
    PyObject *stream, *text, *level = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UU|O", kwlist, &stream, &text, &level))
        return NULL;
    if (level != Py_None && !PyUnicode_Check(level)) {
        PyErr_SetString(PyExc_TypeError, "emit() level must be str or None");
        return NULL;
    }
    if (emit(self, stream, text, level == Py_None ? NULL : level) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lines_flush_partials(LinesObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *fresh = PyDict_New();
    if (fresh == NULL)
        return NULL;
    /* Everything taken out first: what an emit's fallback calls sees a fresh state. Open
     * marks stay (in the set), as the reference's set keeps them. */
    Slot slots[SLOTS];
    int used = self->used;
    memcpy(slots, self->slots, sizeof(Slot) * (size_t)used);
    self->used = 0;
    PyObject *partial = self->partial;
    self->partial = fresh;
    int status = 0;
    for (int i = 0; i < used; i++)
        if (status == 0 && slots[i].open)
            status = PySet_Add(self->open, slots[i].stream);
    for (int i = 0; i < used; i++)
        if (status == 0 && PyUnicode_GET_LENGTH(slots[i].partial) > 0)
            status = emit(self, slots[i].stream, slots[i].partial, NULL);
    PyObject *stream, *text;
    Py_ssize_t pos = 0;
    while (status == 0 && PyDict_Next(partial, &pos, &stream, &text))
        if (PyUnicode_Check(text) && PyUnicode_GET_LENGTH(text) > 0)
            status = emit(self, stream, text, NULL);
    for (int i = 0; i < used; i++) {
        Py_DECREF(slots[i].stream);
        Py_DECREF(slots[i].partial);
    }
    Py_DECREF(partial);
    if (status < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lines_order_with(LinesObject *self, PyObject *gate)
{
    int probe_fd = -1;
    if (gate != Py_None) {
        PyObject *probe = PyObject_GetAttr(gate, s_probe_fd);
        if (probe == NULL)
            return NULL;
        long number = PyLong_AsLong(probe);
        Py_DECREF(probe);
        if (number == -1 && PyErr_Occurred())
            return NULL;
        probe_fd = number < 0 || number > INT_MAX ? -1 : (int)number;
    }
    Py_XSETREF(self->gate, gate == Py_None ? NULL : Py_NewRef(gate));
    self->probe_fd = probe_fd;
    self->gate_pending = 0;
    for (int i = 0; i < self->used; i++)
        self->slots[i].open = 0;
    if (PySet_Clear(self->open) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lines_route_through(LinesObject *self, PyObject *route)
{
    Py_XSETREF(self->route, route == Py_None ? NULL : Py_NewRef(route));
    Py_RETURN_NONE;
}

static PyObject *
lines_get_route(LinesObject *self, void *Py_UNUSED(closure))
{
    if (self->route != NULL)
        return Py_NewRef(self->route);
    return PyObject_GetAttr((PyObject *)self, s_write);
}

static PyMethodDef lines_methods[] = {
    {"write", (PyCFunction)(void (*)(void))lines_write, METH_FASTCALL,
     "write(stream, text): Python-level text of the task, any piece of a line."},
    {"feed", (PyCFunction)(void (*)(void))lines_feed, METH_FASTCALL,
     "feed(stream, text): text that comes in order already, split into lines as write."},
    {"emit", (PyCFunction)(void (*)(void))lines_emit, METH_VARARGS | METH_KEYWORDS,
     "emit(stream, text, level=None): one whole line, in its own record."},
    {"flush_partials", (PyCFunction)lines_flush_partials, METH_NOARGS,
     "Each stream's line not ended yet, as a line of its own (at the task's end)."},
    {"order_with", (PyCFunction)lines_order_with, METH_O,
     "Keep Python-level lines in order with fd-level output the gate delivers; None: stop."},
    {"route_through", (PyCFunction)lines_route_through, METH_O,
     "Send Python-level text through route (which ends in write); None: straight in."},
    {NULL}};

static PyMemberDef lines_members[] = {
    {"_fd", T_INT, offsetof(LinesObject, fd), 0, "The spool file's descriptor, -1 if none."},
    {"_seq", T_LONGLONG, offsetof(LinesObject, seq), 0, "The last line's sequence number."},
    {"gate_pending", T_BOOL, offsetof(LinesObject, gate_pending), 0,
     "Raised by the gate's reader while it holds output it took out of a pipe, undelivered."},
    {"_max_line_bytes", T_PYSSIZET, offsetof(LinesObject, max_line_bytes), READONLY, NULL},
    {NULL}};

static PyGetSetDef lines_getset[] = {
    {"route", (getter)lines_get_route, NULL,
     "Where the routers send Python-level text: write, or what route_through set.", NULL},
    {NULL}};

static PyTypeObject LinesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "capture_shim._speedups.Lines",
    .tp_basicsize = sizeof(LinesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The line state of one task run's output and its spool descriptor.",
    .tp_traverse = (traverseproc)lines_traverse,
    .tp_clear = (inquiry)lines_clear,
    .tp_dealloc = (destructor)lines_dealloc,
    .tp_new = lines_new,
    .tp_init = (initproc)lines_init,
    .tp_methods = lines_methods,
    .tp_members = lines_members,
    .tp_getset = lines_getset,
};

/* -- RouterBase ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *original; /* the stream in place before routing */
    PyObject *stream;   /* "stdout" or "stderr" */
    PyObject *current;  /* the ContextVar holding the current task's capture */
    PyObject *write;    /* self.write, bound once: `print` asks for it at every piece */
    PyTypeObject *lines_type; /* the last type of capture found to be a Lines */
} RouterObject;

static int
router_traverse(RouterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->stream);
    Py_VISIT(self->current);
    Py_VISIT(self->write);
    Py_VISIT(self->lines_type);
    return 0;
}

static int
router_clear(RouterObject *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->stream);
    Py_CLEAR(self->current);
    Py_CLEAR(self->write);
    Py_CLEAR(self->lines_type);
    return 0;
}

static void
router_dealloc(RouterObject *self)
{
    PyObject_GC_UnTrack(self);
    router_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
router_init(RouterObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"original", "stream", "current", NULL};
    PyObject *original, *stream, *current;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OUO!", kwlist, &original, &stream,
                                     &PyContextVar_Type, &current))
        return -1;
    Py_XSETREF(self->original, Py_NewRef(original));
    Py_XSETREF(self->stream, Py_NewRef(stream));
    Py_XSETREF(self->current, Py_NewRef(current));
    Py_CLEAR(self->write);
    self->write = PyObject_GenericGetAttr((PyObject *)self, s_write);
    return self->write == NULL ? -1 : 0;
}

static int
is_write(PyObject *name)
{
    return name == s_write
           || (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "write") == 0);
}

/* Attributes: `write` as bound at __init__ (no new bound method for each piece `print` writes),
 * the others as usual, and what the router does not have, the original stream's (encoding,
 * isatty, fileno…). */
static PyObject *
router_getattro(RouterObject *self, PyObject *name)
{
    if (self->write != NULL && is_write(name))
        return Py_NewRef(self->write);
    PyObject *found = PyObject_GenericGetAttr((PyObject *)self, name);
    if (found != NULL || self->original == NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return found;
    PyErr_Clear();
    return PyObject_GetAttr(self->original, name);
}

/* Setting or deleting `write` drops the bound one: looked up as usual from then on. */
static int
router_setattro(RouterObject *self, PyObject *name, PyObject *value)
{
    if (is_write(name))
        Py_CLEAR(self->write);
    return PyObject_GenericSetAttr((PyObject *)self, name, value);
}

static PyObject *
router_write(RouterObject *self, PyObject *text)
{
    if (self->current == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RouterBase.__init__ was not called");
        return NULL;
    }
    PyObject *cap;
    if (PyContextVar_Get(self->current, Py_None, &cap) < 0)
        return NULL;
    if (cap == Py_None) {
        Py_DECREF(cap);
        return PyObject_CallMethodOneArg(self->original, s_write, text);
    }
    int status;
    PyTypeObject *type = Py_TYPE(cap);
    if (type != self->lines_type && PyType_IsSubtype(type, &LinesType))
        Py_XSETREF(self->lines_type, (PyTypeObject *)Py_NewRef(type));
    if (type == self->lines_type && ((LinesObject *)cap)->route == NULL) {
        status = lines_write_text((LinesObject *)cap, self->stream, text);
    }
    else {
        PyObject *route = PyObject_GetAttrString(cap, "route");
        PyObject *result = NULL;
        if (route != NULL) {
            result = PyObject_CallFunctionObjArgs(route, self->stream, text, NULL);
            Py_DECREF(route);
        }
        status = result == NULL ? -1 : 0;
        Py_XDECREF(result);
    }
    Py_DECREF(cap);
    if (status < 0)
        return NULL;
    Py_ssize_t size = PyUnicode_Check(text) ? PyUnicode_GET_LENGTH(text) : PyObject_Length(text);
    return size < 0 ? NULL : PyLong_FromSsize_t(size);
}

static PyMethodDef router_methods[] = {
    {"write", (PyCFunction)router_write, METH_O,
     "Text to the current task's capture, or outside a task to the original stream."},
    {NULL}};

static PyMemberDef router_members[] = {
    {"_original", T_OBJECT, offsetof(RouterObject, original), READONLY, NULL},
    {"_stream", T_OBJECT, offsetof(RouterObject, stream), READONLY, NULL},
    {NULL}};

static PyTypeObject RouterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "capture_shim._speedups.RouterBase",
    .tp_basicsize = sizeof(RouterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "What print calls inside a task: sys.stdout/sys.stderr's write.",
    .tp_traverse = (traverseproc)router_traverse,
    .tp_clear = (inquiry)router_clear,
    .tp_dealloc = (destructor)router_dealloc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)router_init,
    .tp_getattro = (getattrofunc)router_getattro,
    .tp_setattro = (setattrofunc)router_setattro,
    .tp_methods = router_methods,
    .tp_members = router_members,
};

/* -- the collector's reader: line records back into lines ------------------------------------ */

/*
 * collector.records reads a spool file's records with read_lines while they have the shape the
 * writer above gives them, and hands any other record to its Python parser (parse_record), which
 * decides as it always did. A record read here is the line that parser would make of it, value
 * for value (tests/unit/test_records_reader.py compares the two): its text ASCII without NUL,
 * within the line bound; its seq above the file's last and at most the highest accepted; its time
 * the float nearest n * 10**-6, which is what a JSON parser makes of "<n>e-6".
 */

static PyObject *s_stdout, *s_stderr, *s_log;

/* The escape after a backslash at p (p < end), as one ASCII character other than NUL; 0 when
 * it is none (another escape, a code point that is not ASCII or is NUL: not for this reader).
 * *size is how many bytes it takes after the backslash. */
static int
unescape(const unsigned char *p, const unsigned char *end, int *size)
{
    *size = 1;
    switch (*p) {
    case '"': return '"';
    case '\\': return '\\';
    case '/': return '/';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'u': break;
    default: return 0;
    }
    if (end - p < 5)
        return 0;
    int value = 0;
    for (int i = 1; i <= 4; i++) {
        int c = p[i], digit;
        if (c >= '0' && c <= '9')
            digit = c - '0';
        else if (c >= 'a' && c <= 'f')
            digit = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            digit = c - 'A' + 10;
        else
            return 0;
        value = value * 16 + digit;
    }
    *size = 5;
    return value > 0 && value < 0x80 ? value : 0;
}

/* The JSON string whose content starts at *pos (after its opening quote), as a str of ASCII
 * text without NUL of at most `limit` characters; *pos moves past its closing quote. NULL with
 * no exception when it is not one; NULL with an exception on failure. */
static PyObject *
read_text(const unsigned char **pos, const unsigned char *end, Py_ssize_t limit)
{
    const unsigned char *p = *pos, *start = p;
    Py_ssize_t chars = 0;
    int escaped = 0;
    for (;;) {
        if (p >= end)
            return NULL;
        unsigned char c = *p;
        if (c == '"')
            break;
        if (c == '\\') {
            int size;
            if (p + 1 >= end || unescape(p + 1, end, &size) == 0)
                return NULL;
            p += 1 + size;
            escaped = 1;
        }
        else if (c < 0x20 || c >= 0x80) {
            return NULL; /* a control character (not JSON), or text that is not ASCII */
        }
        else {
            p++;
        }
        if (++chars > limit)
            return NULL;
    }
    PyObject *text = PyUnicode_New(chars, 127);
    if (text == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    if (!escaped) {
        memcpy(out, start, (size_t)chars);
    }
    else {
        for (const unsigned char *q = start; q < p;) {
            if (*q == '\\') {
                int size;
                *out++ = (Py_UCS1)unescape(q + 1, end, &size);
                q += 1 + size;
            }
            else {
                *out++ = *q++;
            }
        }
    }
    *pos = p + 1;
    return text;
}

/* Digits at *pos as a JSON integer (no leading zero) of at most `most` digits; -1 if none. */
static long long
read_uint(const unsigned char **pos, const unsigned char *end, int most)
{
    const unsigned char *p = *pos;
    long long value = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (++digits > most || (digits == 2 && value == 0))
            return -1;
        value = value * 10 + (*p++ - '0');
    }
    if (digits == 0)
        return -1;
    *pos = p;
    return value;
}

#define LITERAL(p, end, text) \
    ((end) - (p) >= (Py_ssize_t)sizeof(text) - 1 && memcmp((p), (text), sizeof(text) - 1) == 0 \
         ? ((p) += sizeof(text) - 1, 1) \
         : 0)

/* One record, data[p:end] without its newline, as a Line; NULL without an exception when it
 * is not a record for this reader. */
static PyObject *
read_line(const unsigned char *p, const unsigned char *end, long long last, long long most,
          Py_ssize_t limit, Py_ssize_t level_limit, PyTypeObject *line_type, long long *seq_out)
{
    if (!LITERAL(p, end, "{\"k\":\"line\",\"n\":"))
        return NULL;
    long long seq = read_uint(&p, end, 18);
    if (seq <= last || seq > most || !LITERAL(p, end, ",\"t\":"))
        return NULL;
    /* Below 2**53 every integer is a double, and one division rounds once: the double
     * nearest n / 10**6, as a JSON parser reads "<n>e-6". */
    long long micros = read_uint(&p, end, 16);
    if (micros < 0 || micros >= (1LL << 53) || !LITERAL(p, end, "e-6,\"s\":\""))
        return NULL;
    PyObject *stream;
    if (LITERAL(p, end, "stdout\""))
        stream = s_stdout;
    else if (LITERAL(p, end, "stderr\""))
        stream = s_stderr;
    else if (LITERAL(p, end, "log\""))
        stream = s_log;
    else
        return NULL;
    PyObject *level = NULL, *message = NULL, *line = NULL;
    if (LITERAL(p, end, ",\"l\":\"")) {
        level = read_text(&p, end, level_limit);
        if (level == NULL)
            return NULL;
    }
    if (!LITERAL(p, end, ",\"m\":\""))
        goto done;
    message = read_text(&p, end, limit);
    if (message == NULL || end - p != 1 || *p != '}')
        goto done;
    line = line_type->tp_alloc(line_type, 5);
    if (line == NULL)
        goto done;
    PyObject *number = PyLong_FromLongLong(seq);
    PyObject *t = number ? PyFloat_FromDouble((double)micros / 1e6) : NULL;
    if (t == NULL) {
        Py_XDECREF(number);
        Py_CLEAR(line);
        goto done;
    }
    PyTuple_SET_ITEM(line, 0, number);
    PyTuple_SET_ITEM(line, 1, t);
    PyTuple_SET_ITEM(line, 2, Py_NewRef(stream));
    PyTuple_SET_ITEM(line, 3, level ? Py_NewRef(level) : Py_NewRef(Py_None));
    PyTuple_SET_ITEM(line, 4, Py_NewRef(message));
    *seq_out = seq;
done:
    Py_XDECREF(level);
    Py_XDECREF(message);
    return line;
}

/* read_lines(lines, data, pos, end, last_seq, most_seq, max_line, max_level, max_lines,
 * line_type) -> (pos, last_seq) */
static PyObject *
read_lines(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10 || !PyList_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])
        || !PyType_Check(args[9])
        || !PyType_IsSubtype((PyTypeObject *)args[9], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "read_lines(lines, data, pos, end, last_seq, most_seq, max_line, "
                        "max_level, max_lines, line_type)");
        return NULL;
    }
    PyObject *lines = args[0];
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]), stop = PyLong_AsSsize_t(args[3]);
    long long last = PyLong_AsLongLong(args[4]), most = PyLong_AsLongLong(args[5]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[6]), level_limit = PyLong_AsSsize_t(args[7]);
    Py_ssize_t max_lines = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (pos < 0 || stop > size || pos > stop) {
        PyErr_SetString(PyExc_ValueError, "read_lines: pos and end out of the data");
        return NULL;
    }
    PyTypeObject *line_type = (PyTypeObject *)args[9];
    while (pos < stop && PyList_GET_SIZE(lines) < max_lines) {
        const unsigned char *record = data + pos;
        const unsigned char *nl = memchr(record, '\n', (size_t)(stop - pos));
        if (nl == NULL)
            break;
        long long seq = 0;
        PyObject *line =
            read_line(record, nl, last, most, limit, level_limit, line_type, &seq);
        if (line == NULL) {
            if (PyErr_Occurred())
                return NULL;
            break; /* not for this reader: collector.records parses it */
        }
        int appended = PyList_Append(lines, line);
        Py_DECREF(line);
        if (appended < 0)
            return NULL;
        last = seq;
        pos = nl + 1 - data;
    }
    return Py_BuildValue("nL", pos, last);
}

/* -- the collector's COPY rows --------------------------------------------------------------- */

/*
 * copy_rows is collector.copydata.copy_data_py, byte for byte (tests/unit/test_copy_data.py
 * compares the two): the lines of each (task_id, base, lines) piece as rows of Postgres's
 * binary COPY format, in one bytes object.
 */

typedef struct {
    PyObject *bytes; /* the bytes object written into, grown as needed */
    Py_ssize_t used;
} Out;

static char *
out_room(Out *out, Py_ssize_t more)
{
    Py_ssize_t size = PyBytes_GET_SIZE(out->bytes);
    if (out->used + more > size) {
        Py_ssize_t want = size * 2 > out->used + more ? size * 2 : out->used + more + 4096;
        if (_PyBytes_Resize(&out->bytes, want) < 0)
            return NULL;
    }
    return PyBytes_AS_STRING(out->bytes) + out->used;
}

static char *
put_be(char *p, unsigned long long value, int size)
{
    for (int i = size - 1; i >= 0; i--) {
        p[i] = (char)(value & 0xff);
        value >>= 8;
    }
    return p + size;
}

/* A str's UTF-8 bytes: ASCII text is its own; other text is encoded into *owned (strict, as
 * str.encode: a lone surrogate raises UnicodeEncodeError). */
static const char *
utf8_of(PyObject *text, Py_ssize_t *size, PyObject **owned)
{
    *owned = NULL;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "copy_rows: text fields must be str");
        return NULL;
    }
    if (PyUnicode_IS_ASCII(text)) {
        *size = PyUnicode_GET_LENGTH(text);
        return (const char *)PyUnicode_1BYTE_DATA(text);
    }
    *owned = PyUnicode_AsUTF8String(text);
    if (*owned == NULL)
        return NULL;
    *size = PyBytes_GET_SIZE(*owned);
    return PyBytes_AS_STRING(*owned);
}

/* Append a field: its length and its bytes. */
static int
put_field(Out *out, const char *value, Py_ssize_t size)
{
    if (size > 0x7fffffff) {
        PyErr_SetString(PyExc_OverflowError, "copy_rows: a field over 2 GB");
        return -1;
    }
    char *p = out_room(out, 4 + size);
    if (p == NULL)
        return -1;
    p = put_be(p, (unsigned long long)size, 4);
    memcpy(p, value, (size_t)size);
    out->used += 4 + size;
    return 0;
}

static int
put_text_field(Out *out, PyObject *text)
{
    Py_ssize_t size;
    PyObject *owned;
    const char *value = utf8_of(text, &size, &owned);
    if (value == NULL)
        return -1;
    int status = put_field(out, value, size);
    Py_XDECREF(owned);
    return status;
}

static int
put_int8_field(Out *out, long long value)
{
    char *p = out_room(out, 12);
    if (p == NULL)
        return -1;
    p = put_be(p, 8, 4);
    put_be(p, (unsigned long long)value, 8);
    out->used += 12;
    return 0;
}

static int
put_row(Out *out, PyObject *task, long long base, PyObject *line, double earliest,
        double latest, long long epoch)
{
    if (!PyTuple_Check(line) || PyTuple_GET_SIZE(line) != 5) {
        PyErr_SetString(PyExc_TypeError, "copy_rows: a line is (n, t, stream, level, message)");
        return -1;
    }
    long long n = PyLong_AsLongLong(PyTuple_GET_ITEM(line, 0));
    double t = PyFloat_AsDouble(PyTuple_GET_ITEM(line, 1));
    if (PyErr_Occurred())
        return -1;
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
        return -1;
    }
    if (!(earliest <= t && t <= latest)) /* fields.clamped_time */
        t = t < earliest ? earliest : (t > latest ? latest : t);
    /* int(t * 1_000_000 + 0.5): two roundings, as in Python (no fused multiply-add). */
    volatile double scaled = t * 1e6;
    double rounded = scaled + 0.5;
    long long seq;
    if (__builtin_add_overflow(base, n, &seq)) {
        PyErr_SetString(PyExc_OverflowError, "copy_rows: seq out of range");
        return -1;
    }
    char *p = out_room(out, 2);
    if (p == NULL)
        return -1;
    put_be(p, 6, 2);
    out->used += 2;
    PyObject *level = PyTuple_GET_ITEM(line, 3);
    if (put_text_field(out, task) < 0 || put_int8_field(out, seq) < 0
        || put_int8_field(out, (long long)rounded - epoch) < 0
        || put_text_field(out, PyTuple_GET_ITEM(line, 2)) < 0)
        return -1;
    if (level == Py_None) {
        p = out_room(out, 4);
        if (p == NULL)
            return -1;
        put_be(p, 0xffffffffULL, 4);
        out->used += 4;
    }
    else if (put_text_field(out, level) < 0) {
        return -1;
    }
    return put_text_field(out, PyTuple_GET_ITEM(line, 4));
}

/* copy_rows(pieces, pg_epoch_us, earliest, latest) -> bytes */
static PyObject *
copy_rows(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "copy_rows(pieces, pg_epoch_us, earliest, latest)");
        return NULL;
    }
    long long epoch = PyLong_AsLongLong(args[1]);
    double earliest = PyFloat_AsDouble(args[2]), latest = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *pieces = PySequence_Fast(args[0], "copy_rows: pieces must be a sequence");
    if (pieces == NULL)
        return NULL;
    Out out = {PyBytes_FromStringAndSize(NULL, 1 << 16), 0};
    if (out.bytes == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(pieces); i++) {
        PyObject *piece = PySequence_Fast_GET_ITEM(pieces, i);
        if (!PyTuple_Check(piece) || PyTuple_GET_SIZE(piece) != 3) {
            PyErr_SetString(PyExc_TypeError, "copy_rows: a piece is (task_id, base, lines)");
            goto fail;
        }
        PyObject *task = PyTuple_GET_ITEM(piece, 0);
        long long base = PyLong_AsLongLong(PyTuple_GET_ITEM(piece, 1));
        if (base == -1 && PyErr_Occurred())
            goto fail;
        PyObject *lines = PySequence_Fast(PyTuple_GET_ITEM(piece, 2),
                                          "copy_rows: lines must be a sequence");
        if (lines == NULL)
            goto fail;
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(lines); j++) {
            if (put_row(&out, task, base, PySequence_Fast_GET_ITEM(lines, j), earliest, latest,
                        epoch) < 0) {
                Py_DECREF(lines);
                goto fail;
            }
        }
        Py_DECREF(lines);
    }
    Py_DECREF(pieces);
    if (_PyBytes_Resize(&out.bytes, out.used) < 0)
        return NULL;
    return out.bytes;
fail:
    Py_DECREF(pieces);
    Py_XDECREF(out.bytes);
    return NULL;
}

/* -- the module ------------------------------------------------------------------------------ */

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

static int
speedups_exec(PyObject *module)
{
    if (intern(&s_write, "write") < 0 || intern(&s_newline, "\n") < 0
        || intern(&s_empty, "") < 0 || intern(&s_take_in, "take_in") < 0
        || intern(&s_read_ends, "read_ends") < 0
        || intern(&s_unwritten, "_unwritten") < 0 || intern(&s_probe_fd, "probe_fd") < 0
        || intern(&s_stdout, "stdout") < 0 || intern(&s_stderr, "stderr") < 0
        || intern(&s_log, "log") < 0)
        return -1;
    s_ellipsis = PyUnicode_FromString(" \xe2\x80\xa6");
    if (s_ellipsis == NULL)
        return -1;
    if (PyType_Ready(&LinesType) < 0 || PyType_Ready(&RouterType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Lines", (PyObject *)&LinesType) < 0
        || PyModule_AddObjectRef(module, "RouterBase", (PyObject *)&RouterType) < 0
        || PyModule_AddIntConstant(module, "ABI", SPEEDUPS_ABI) < 0)
        return -1;
    return 0;
}

static PyMethodDef speedups_methods[] = {
    {"read_lines", (PyCFunction)(void (*)(void))read_lines, METH_FASTCALL,
     "read_lines(lines, data, pos, end, last_seq, most_seq, max_line, max_level, max_lines, "
     "line_type) -> (pos, last_seq): the line records from data[pos:end] of the writer's shape "
     "appended to lines, up to the first record of any other shape (collector.records)."},
    {"copy_rows", (PyCFunction)(void (*)(void))copy_rows, METH_FASTCALL,
     "copy_rows(pieces, pg_epoch_us, earliest, latest) -> bytes: the pieces' lines as binary "
     "COPY rows (collector.copydata)."},
    {NULL}};

static PyModuleDef_Slot speedups_slots[] = {{Py_mod_exec, speedups_exec}, {0, NULL}};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "capture_shim._speedups",
    .m_doc = "The shim's hot path in C (capture_shim.lines, rule for rule), and the collector's "
             "(collector.records.read, collector.copydata.copy_data).",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
