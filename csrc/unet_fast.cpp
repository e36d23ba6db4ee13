// The extension's module. Every op schema is defined in Python (unet_fast/ops/_library.py), so the ops
// exist without this extension; the kernels in cpu/<op>.cpp and cuda/<op>.cu register their
// implementations with TORCH_LIBRARY_IMPL, and fake kernels and autograd are registered in Python.
#include <Python.h>

// An importable module, so `import unet_fast._C` loads the library and runs the registrations.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
