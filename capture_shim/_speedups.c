/* Placeholder for the shim's optional C accelerators: an empty module, so that the build of
 * the extension can be set up and tested. The real code replaces this file. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "capture_shim._speedups",
    .m_doc = "Optional C accelerators of the capture shim (none yet).",
    .m_size = 0,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
