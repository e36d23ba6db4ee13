"""The one build of record: the C++/CUDA extension unet_fast._C from csrc/.

CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) are always built. CUDA kernels (csrc/cuda/*.cu)
are built when torch has CUDA and nvcc is found, or when FORCE_CUDA=1. UNET_FAST_NO_EXTENSION=1
skips the extension entirely (the package then runs on its pure PyTorch paths).
Build against the installed torch: pip install -e . --no-build-isolation
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension_modules():
    if os.environ.get("UNET_FAST_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-fopenmp"]
    with_cuda = os.environ.get("FORCE_CUDA") == "1" or (torch.version.cuda is not None and CUDA_HOME is not None)
    if with_cuda:
        ext = CUDAExtension(
            "unet_fast._C", cpp + sources("csrc/cuda/*.cu"),
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension("unet_fast._C", cpp, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
