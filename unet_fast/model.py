"""unet_fast.UNet: the U-Net's layers (``architecture.UNetArchitecture``, shared with the reference,
so weights move between the two unchanged) with a choice of forward implementations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .architecture import UNetArchitecture
from . import ops
from .ops import conv3x3_relu, crop_concat

BACKENDS = ("auto", "torch", "triton")
# The Triton kernels use bf16 and tensor-core (mma/wgmma) paths tuned for sm_80 and sm_90; older GPUs
# (V100, T4) have no bf16 tensor cores and the kernels are neither tuned nor tested there, so "auto"
# leaves them on torch (cuDNN).
MIN_TRITON_CAPABILITY = (8, 0)


def auto_backend(device: torch.device) -> tuple[str, str]:
    """The backend ``backend="auto"`` runs on ``device``, and why (for ``unet_fast.info()``)."""
    if device.type != "cuda":
        return "torch", f"the Triton kernels run on CUDA devices only, not {device.type}"
    if ops.backend("conv3x3_relu", device, torch.float32) != "triton":
        return "torch", "Triton cannot launch on CUDA in this process (not installed, or TRITON_INTERPRET=1)"
    # get_device_properties, not get_device_capability: torch.compile folds it to a constant
    properties = torch.cuda.get_device_properties(device)
    if (properties.major, properties.minor) < MIN_TRITON_CAPABILITY:
        return "torch", (f"{properties.name} has compute capability {properties.major}.{properties.minor}; "
                         f"the Triton kernels need >= {MIN_TRITON_CAPABILITY[0]}.{MIN_TRITON_CAPABILITY[1]}")
    return "triton", "CUDA device of compute capability >= 8.0 and triton installed"


def conv_relu(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """relu(conv(x)), the ReLU in place on the convolution's fresh output where nothing else can hold it: not
    where a hook on the layer (or a global module hook) sees it, as in the reference, before the ReLU (a forward
    hook keeping features would find them rectified; a full backward hook's output is a view that autograd
    forbids changing in place)."""
    y = conv(x)
    return F.relu(y) if hooked(conv) else F.relu_(y)


def hooked(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` runs hooks: its own (forward, pre-forward: torch.nn.utils.prune's, the old
    weight_norm's and spectral_norm's; backward) or global module hooks."""
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_hooks
                or module._backward_pre_hooks or _any_global_hook())


# torch's own test of global module hooks (private; a torch without it is taken to have none)
_any_global_hook = getattr(torch.nn.modules.module, "_has_any_global_hook", lambda: False)


class UNet(UNetArchitecture):
    """U-Net with fused kernels where available; drop-in for ``unet_fast.reference.UNet`` (same
    constructor, state_dict and results).

    backend: "torch" (aten convolutions, ReLU applied in place on each convolution's fresh output,
    which saves an allocation and a pass per layer and is safe for autograd, since ReLU's backward
    reads its output and the convolution's backward does not; copy and crop by the crop_concat op),
    "triton" (every 3x3 conv + ReLU through the fused conv3x3_relu op's Triton kernels, the decoder's
    first conv reading the skip connection's window in place, wherever Triton runs: CUDA, or the CPU
    under TRITON_INTERPRET=1 (tests); the aten composite elsewhere and for dtypes it does not take),
    or "auto" (the fastest backend available for the input's device: "triton" on CUDA devices of
    compute capability >= 8.0 when triton is installed, else "torch"; ``auto_backend`` says why).

    pool_epilogue, direct_first_layer (triton backend only): each encoder level's second conv also
    writes the 2x2 max-pool from its epilogue (conv3x3_relu(pool=True)), and the first conv (at most
    4 input channels) uses the direct kernel (conv3x3_relu(direct=True)). On by default since an
    H200 measured them (benchmarks/results/2026-11-26-NVIDIA_H200.md): the network forward at batch
    8, 572 x 572, bf16 took 7.41 ms with both against 8.19 ms without (the pooled epilogue 2.1x faster
    than cuDNN + pool on the widest level, the direct first layer 1.4x faster than the GEMM). A choice
    of kernels, not of architecture: not part of config().

    Hooks on a 3x3 convolution (or global module hooks, torch.nn.utils.prune's) run as in the reference: the
    torch backend's in-place ReLU leaves a hooked layer's output alone, and a network with such a hook runs
    the torch path whatever its backend (``hooked_convolutions``).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 5,
                 base_channels: int = 64, padding: str = "valid", dropout: float = 0.0,
                 backend: str = "auto", pool_epilogue: bool = True, direct_first_layer: bool = True):
        super().__init__(in_channels, num_classes, depth, base_channels, padding, dropout)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for name, flag in (("pool_epilogue", pool_epilogue), ("direct_first_layer", direct_first_layer)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.backend = backend
        self.pool_epilogue = pool_epilogue
        self.direct_first_layer = direct_first_layer

    def config(self) -> dict:
        return {**super().config(), "backend": self.backend}

    def resolved_backend(self, device: torch.device) -> str:
        """The backend a forward pass on ``device`` uses."""
        if self.backend == "auto":
            return auto_backend(device)[0]
        return self.backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.resolved_backend(x.device) == "triton" and not self.hooked_convolutions():
            return self._forward_triton(x)
        return self._forward_torch(x)

    def hooked_convolutions(self) -> bool:
        """Whether a 3x3 convolution runs hooks when called (``hooked``). The Triton path reads their weights
        and never calls them, so it would skip the hooks (a pruned or weight-normalised layer would even use a
        stale weight): the torch path, which calls every layer as the reference does, runs instead."""
        return any(hooked(block[name]) for block in (*self.encoder, *self.decoder) for name in ("conv1", "conv2"))

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        # Each tensor is let go as soon as nothing reads it (x rebound after every layer, each skip popped by
        # the level that reads it): without autograd that is what the forward holds, a third less at its peak
        # on the CPU than holding every skip and each double conv's input to the end (tiling._cpu_forward_bytes)
        skips = []
        for level, block in enumerate(self.encoder):
            x = conv_relu(block.conv1, x)
            x = conv_relu(block.conv2, x)
            if level < self.depth - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        x = self.dropout(x)
        for block in self.decoder:
            x = block.upconv(x)
            x = crop_concat(skips.pop(), x)
            x = conv_relu(block.conv1, x)
            x = conv_relu(block.conv2, x)
        return self.head(x)

    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        padding = 1 if self.padding == "same" else 0
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        # None where Triton is the default (a GPU: each layer's parts then run where the measured table
        # says); asked for by name where it is not, so Triton's interpreter runs too
        default = ops.backend("conv3x3_relu", x.device, dtype) == "triton"
        implementation = None if default else (
            "triton" if "triton" in ops.implementations("conv3x3_relu", x.device, dtype) else None)

        def conv(layer, t, skip=None, **options):
            return conv3x3_relu(t, layer.weight, layer.bias, skip=skip, padding=padding,
                                implementation=implementation, **options)

        # A level's first conv feeds only its second: the second's dgrad applies the first's ReLU mask
        # in its epilogue, so the first's backward makes no masked copy of its gradient.
        first, second = dict(output_grad_masked=True), dict(mask_input_grad=True)
        skips = []
        for level, block in enumerate(self.encoder):
            x = conv(block.conv1, x, direct=self.direct_first_layer and level == 0, **first)
            if level == self.depth - 1:
                x = conv(block.conv2, x, **second)
            elif self.pool_epilogue:
                skip, x = conv(block.conv2, x, pool=True, **second)
                skips.append(skip)
                del skip   # the decoder's pop lets it go
            else:
                skips.append(conv(block.conv2, x, **second))
                x = F.max_pool2d(skips[-1], 2)
        x = self.dropout(x)
        for block in self.decoder:   # each skip let go once read, as in _forward_torch
            x = block.upconv(x)
            x = conv(block.conv1, x, skips.pop(), **first)
            x = conv(block.conv2, x, **second)
        return self.head(x)
