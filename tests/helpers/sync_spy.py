"""A CPU stand-in for CUDA's sync debug mode: lists the calls that would make the host wait for the device.

On CUDA these read device data on the host (a copy back and a wait for all queued work), or size their
output by the data (`nonzero`, boolean indexing, `bincount`, `unique`, `repeat_interleave` without
`output_size`). On CPU nothing waits, but the same calls are seen, so a test of the host syncs of a
training step runs everywhere. Each entry is (op, "file:function") of the innermost frame in this
package; torch's own syncs inside a listed call count once. Copies between host and device cannot be
seen on a CPU (`.to("cuda")`, `torch.tensor(..., device="cuda")`): tests/test_gpu.py counts them on a GPU.
"""

from __future__ import annotations

import contextlib
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}
DATA_SIZED = {"nonzero", "bincount", "unique", "_unique2", "unique_consecutive", "masked_select",
              "masked_scatter", "_local_scalar_dense", "is_nonzero", "equal", "allclose"}


def where() -> str:
    frames = [f for f in traceback.extract_stack() if "/mosaicbert/" in f.filename]
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].name}" if frames else "torch"


class _Reads(TorchFunctionMode):
    def __init__(self, seen: list, inside: list):
        super().__init__()
        self.seen, self.inside = seen, inside

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name not in READS:
            return func(*args, **(kwargs or {}))
        self.seen.append((name, where()))
        self.inside.append(True)
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.inside.pop()


class _DataSized(TorchDispatchMode):
    def __init__(self, seen: list, inside: list):
        super().__init__()
        self.seen, self.inside = seen, inside

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        indices = args[1] if name in ("index", "index_put", "index_put_") and len(args) > 1 else ()
        boolean_index = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
        repeat_unsized = name == "repeat_interleave" and (kwargs or {}).get("output_size") is None
        if not self.inside and (name in DATA_SIZED or boolean_index or repeat_unsized):
            self.seen.append((name + ("[bool index]" if boolean_index else ""), where()))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_syncs():
    """`with host_syncs() as seen:` ... `seen` lists the syncs of the block."""
    seen: list[tuple[str, str]] = []
    inside: list[bool] = []
    with _Reads(seen, inside), _DataSized(seen, inside):
        yield seen
