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
  // Pixel-wise softmax cross-entropy times weight (None: 1); reduction 0 none, 1 mean over non-ignored
  // pixels, 2 sum. Returns (loss, d loss_sum / d logits (softmax - onehot) * weight, unscaled, in
  // logits' layout, or an empty tensor when compute_grad is false, number of non-ignored pixels).
  m.def("weighted_cross_entropy(Tensor logits, Tensor target, Tensor? weight, int reduction, int ignore_index, "
        "bool compute_grad) -> (Tensor, Tensor, Tensor)");
}
