"""Counting, on CPU, the ops that would make a CUDA host wait for the device (issue 23).

The tests' small version of bench/bench_host_syncs.py's counter: within ``with count_host_syncs() as
syncs:`` every such op is counted in ``syncs`` (a ``Counter`` by kind): ``item``
(``aten._local_scalar_dense``: ``.item()``, ``int()`` / ``float()`` / ``bool()`` of a tensor),
``nonzero``, ``bool index`` (``x[mask]``), ``bool index_put`` (its backward, ``x[mask] = tensor``),
``masked_select``, ``unique``, ``repeat_interleave`` (without ``output_size``), ``equal``,
``bincount`` and ``to host`` (``.cpu()``, ``.tolist()``, ``.numpy()``, which dispatch nothing on
CPU and are seen as functions). Tensors made from Python literals (``aten.lift_fresh``) or copied to
the host with ``.cpu()`` are host tensors: their ``.item()`` and ``x[mask] = number`` are free, as
on CUDA.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {
    "_local_scalar_dense": "item",
    "nonzero": "nonzero",
    "masked_select": "masked_select",
    "equal": "equal",
    "bincount": "bincount",
}
_INDEX_PUT = {"index_put", "index_put_", "_index_put_impl_"}


class _HostTensors:
    """Tensors by identity (a ``WeakSet`` would compare them with ``==``, elementwise)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, obj) -> None:
        self._refs[id(obj)] = weakref.ref(obj)

    def __contains__(self, obj) -> bool:
        ref = self._refs.get(id(obj))
        return ref is not None and ref() is obj


def _is_bool(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """``with count_host_syncs() as syncs:`` counts the host-device synchronisations (by kind) of
    the ops run inside (see the module docstring)."""
    syncs: Counter[str] = Counter()
    host = _HostTensors()

    def kind_of(func, args, kwargs) -> str | None:
        name = func._schema.name.split("::")[-1]
        if name == "_local_scalar_dense" and args[0] in host:
            return None
        if name in _ALWAYS:
            return _ALWAYS[name]
        if name.startswith(("unique", "_unique")):
            return "unique"
        if name == "index" and any(_is_bool(i) for i in args[1]):
            return "bool index"
        if name in _INDEX_PUT and any(_is_bool(i) for i in args[1]):
            accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
            if not accumulate and args[2].numel() == 1 and args[2] in host:
                return None  # x[mask] = number: masked_fill_ on CUDA
            return "bool index_put"
        if name == "repeat_interleave" and func._overloadname == "Tensor":
            return None if kwargs.get("output_size") is not None else "repeat_interleave"
        return None

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            kind = kind_of(func, args, kwargs)
            out = func(*args, **kwargs)
            if func is torch.ops.aten.lift_fresh.default:
                host.add(out)
            if kind is not None:
                syncs[kind] += 1
            return out

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if name in ("cpu", "tolist", "numpy", "__array__") and args[0] not in host:
                syncs["to host"] += 1
                if isinstance(out, torch.Tensor):
                    host.add(out)
            return out

    with Dispatch(), Functions():
        yield syncs
