// Every op schema of unet_fast in one place. Kernels live in cpu/<op>.cpp and cuda/<op>.cu;
// fake (meta) kernels and autograd are registered in Python (unet_fast/ops/).
#include <Python.h>
#include <torch/library.h>

// An importable module, so `import unet_fast._C` loads the library and runs the registrations.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(unet_fast, m) {
  // cat([centre_crop(skip, x.shape[-2:]), x], dim=1), in x's memory format.
  m.def("crop_concat(Tensor skip, Tensor x) -> Tensor");
}
