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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

static PyObject *s_write, *s_newline, *s_empty, *s_take_in, *s_pending, *s_read_ends,
    *s_unwritten, *s_ellipsis, *s_probe_fd;

/* -- the record ------------------------------------------------------------------------------ */

static const char HEX[] = "0123456789abcdef";

/* The most bytes one code point takes in a record: "\u001f", or a lone surrogate's "\udc80". */
#define MAX_BYTES_PER_CHAR 6

/* `text` as JSON string content, UTF-8: json.encoder.encode_basestring, then encoding with
 * "backslashreplace" (a lone surrogate becomes the six characters \udXXX). */
static char *
put_text(char *p, PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *p++ = (char)c;
        }
        else if (c < 0x80) {
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

static char *
put_uint(char *p, unsigned long long v)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = digits[--n];
    return p;
}

/* -- Lines ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd;                    /* the spool file, -1 while there is none */
    long long seq;             /* the last line's sequence number */
    Py_ssize_t max_line_bytes; /* longest line kept, in UTF-8 bytes */
    Py_ssize_t cut_at;         /* lines longer than this many characters may be over it */
    Py_ssize_t max_partial;    /* text without its newline is let go past this many */
    PyObject *partial;         /* dict: stream -> the text of a line not ended yet */
    PyObject *open;            /* set: streams whose Python-level line is open (with a gate) */
    PyObject *gate;            /* NULL, or fd capture's side */
    PyObject *route;           /* NULL: straight into `write`; else what route_through set */
} LinesObject;

static PyTypeObject LinesType;

static int
lines_traverse(LinesObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->partial);
    Py_VISIT(self->open);
    Py_VISIT(self->gate);
    Py_VISIT(self->route);
    return 0;
}

static int
lines_clear(LinesObject *self)
{
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
            if (PyDict_SetItem(self->partial, stream, s_empty) < 0)
                return -1;
            return emit(self, stream, buf, NULL);
        }
        return PyDict_SetItem(self->partial, stream, buf);
    }
    if (nl == n - 1) { /* one line and its newline: the common case */
        PyObject *line = PyUnicode_Substring(buf, 0, nl);
        if (line == NULL)
            return -1;
        int status = PyDict_SetItem(self->partial, stream, s_empty);
        if (status == 0)
            status = emit(self, stream, line, NULL);
        Py_DECREF(line);
        return status;
    }
    PyObject *parts = PyUnicode_Split(buf, s_newline, -1);
    if (parts == NULL)
        return -1;
    Py_ssize_t count = PyList_GET_SIZE(parts);
    int status = PyDict_SetItem(self->partial, stream, PyList_GET_ITEM(parts, count - 1));
    for (Py_ssize_t i = 0; status == 0 && i < count - 1; i++)
        status = emit(self, stream, PyList_GET_ITEM(parts, i), NULL);
    Py_DECREF(parts);
    return status;
}

/* Whether fd-level output may be waiting: the gate's `pending`, or its pipes readable: an
 * epoll instance holding them (`probe_fd`), else each of `read_ends` polled. An error of the
 * system call says yes: `take_in` looks for itself. */
static int
gate_waiting(PyObject *gate)
{
    PyObject *pending = PyObject_GetAttr(gate, s_pending);
    if (pending == NULL)
        return -1;
    int truth = PyObject_IsTrue(pending);
    Py_DECREF(pending);
    if (truth != 0)
        return truth;
#ifdef __linux__
    PyObject *probe = PyObject_GetAttr(gate, s_probe_fd);
    if (probe == NULL)
        return -1;
    long probe_fd = PyLong_AsLong(probe);
    Py_DECREF(probe);
    if (probe_fd == -1 && PyErr_Occurred())
        return -1;
    if (probe_fd >= 0) {
        struct epoll_event event;
        int ready;
        do {
            ready = epoll_wait((int)probe_fd, &event, 1, 0);
        } while (ready < 0 && errno == EINTR);
        return ready != 0;
    }
#endif
    PyObject *ends = PyObject_GetAttr(gate, s_read_ends);
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
    if (count == 0)
        return 0;
    int ready;
    do {
        ready = poll(fds, count, 0);
    } while (ready < 0 && errno == EINTR);
    if (ready <= 0)
        return ready < 0; /* an error: look (take_in tells what is there) */
    for (nfds_t i = 0; i < count; i++)
        if (fds[i].revents & ~POLLNVAL)
            return 1;
    return 0;
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
        int open = PySet_Contains(self->open, stream);
        if (open < 0)
            return -1;
        if (!open) { /* a new line from Python: what the pipes hold was written before it */
            PyObject *gate = Py_NewRef(self->gate);
            int waiting = gate_waiting(gate);
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
    PyObject *partial = PyDict_GetItemWithError(self->partial, stream);
    if (partial == NULL && PyErr_Occurred())
        return -1;
    Py_XINCREF(partial);
    if (!is_newline(text)) {
        PyObject *buf = joined(partial, text);
        if (buf == NULL) {
            status = -1;
            goto done;
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(buf);
        Py_ssize_t nl = PyUnicode_FindChar(buf, '\n', 0, n, 1);
        if (nl == -2)
            status = -1;
        else if (nl >= 0 || n > self->max_partial) {
            status = take(self, stream, buf, nl);
            Py_ssize_t tn = PyUnicode_GET_LENGTH(text);
            if (status == 0 && gated && tn > 0 && PyUnicode_READ_CHAR(text, tn - 1) == '\n') {
                status = PySet_Discard(self->open, stream) < 0 ? -1 : 0;
                Py_DECREF(buf);
                goto done;
            }
        }
        else
            status = PyDict_SetItem(self->partial, stream, buf); /* kept until its newline */
        Py_DECREF(buf);
        if (status == 0 && gated)
            status = PySet_Add(self->open, stream);
        goto done;
    }
    /* print's last write, ending the line its first ones began */
    if (gated && PySet_Discard(self->open, stream) < 0) {
        status = -1;
        goto done;
    }
    status = PyDict_SetItem(self->partial, stream, s_empty);
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
    if (PySet_Discard(self->open, stream) < 0)
        return NULL;
    PyObject *partial = PyDict_GetItemWithError(self->partial, stream);
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
    PyObject *partial = self->partial;
    self->partial = fresh;
    PyObject *stream, *text;
    Py_ssize_t pos = 0;
    int status = 0;
    while (status == 0 && PyDict_Next(partial, &pos, &stream, &text))
        if (PyUnicode_Check(text) && PyUnicode_GET_LENGTH(text) > 0)
            status = emit(self, stream, text, NULL);
    Py_DECREF(partial);
    if (status < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lines_order_with(LinesObject *self, PyObject *gate)
{
    Py_XSETREF(self->gate, gate == Py_None ? NULL : Py_NewRef(gate));
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
} RouterObject;

static int
router_traverse(RouterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->stream);
    Py_VISIT(self->current);
    return 0;
}

static int
router_clear(RouterObject *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->stream);
    Py_CLEAR(self->current);
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
    return 0;
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
    if (PyObject_TypeCheck(cap, &LinesType) && ((LinesObject *)cap)->route == NULL) {
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
    Py_ssize_t size = PyObject_Length(text);
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
    .tp_methods = router_methods,
    .tp_members = router_members,
};

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
        || intern(&s_pending, "pending") < 0 || intern(&s_read_ends, "read_ends") < 0
        || intern(&s_unwritten, "_unwritten") < 0 || intern(&s_probe_fd, "probe_fd") < 0)
        return -1;
    s_ellipsis = PyUnicode_FromString(" \xe2\x80\xa6");
    if (s_ellipsis == NULL)
        return -1;
    if (PyType_Ready(&LinesType) < 0 || PyType_Ready(&RouterType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Lines", (PyObject *)&LinesType) < 0
        || PyModule_AddObjectRef(module, "RouterBase", (PyObject *)&RouterType) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {{Py_mod_exec, speedups_exec}, {0, NULL}};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "capture_shim._speedups",
    .m_doc = "The shim's hot path in C: capture_shim.lines, rule for rule.",
    .m_size = 0,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
