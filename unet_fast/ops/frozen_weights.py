"""Reuse of what the fused ops derive from a weight (its autocast cast, its packed GEMM layouts) while the
caller promises the weights do not change: ``with frozen_weights(): ...`` around inference.

Without the promise nothing is reused. A weight's version counter does not see writes through
``.data`` (an exponential moving average of the weights written so, for one), so a cache keyed on it
alone could silently serve old weights; inside ``frozen_weights`` the caller vouches instead.
predict_tiled runs its tiles inside it: an eager tile's forward then packs none of its 18 weights again.
Nothing is reused while torch.compile traces or a CUDA graph is captured: a graph must read the live
weights, so that it stays right when they change in place later (a replayed graph casts and packs anew).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import torch
from torch.utils.weak import WeakIdKeyDictionary

_store: contextvars.ContextVar[WeakIdKeyDictionary | None] = contextvars.ContextVar("unet_fast_frozen_weights",
                                                                                     default=None)


@contextlib.contextmanager
def frozen_weights():
    """Within: derived forms of each weight are made once (per thread; nested uses share one store)."""
    token = _store.set(_store.get() if _store.get() is not None else WeakIdKeyDictionary())
    try:
        yield
    finally:
        _store.reset(token)


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # an inference tensor (made under inference_mode) has no version counter
        return None


def derived(weight: torch.Tensor, what: str, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """make(weight), or inside ``frozen_weights`` the one made before for this tensor (same storage,
    version, dtype and shape); ``what`` names the derived form."""
    if torch.compiler.is_compiling():  # first: Dynamo cannot trace a ContextVar
        return make(weight)
    store = _store.get()
    if store is None or (weight.is_cuda and torch.cuda.is_current_stream_capturing()):
        return make(weight)
    key = (weight.data_ptr(), _version(weight), weight.dtype, tuple(weight.shape))
    forms = store.setdefault(weight, {})
    found = forms.get(what)
    if found is None or found[0] != key:
        found = forms[what] = (key, make(weight))
    return found[1]
