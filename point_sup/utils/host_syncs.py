"""Counting the host-device synchronisations of PyTorch code (docs/multi_gpu.md; issue 23).

Used by ``bench/bench_host_syncs.py`` (per training step of every shipped config) and by the tests
that hold a function to no synchronisation (``with count_host_syncs() as syncs: ...``).

A CUDA training step is fast when the host queues kernels without waiting for the GPU; every op whose
result the host must read (a count that sizes a tensor, a Python number) makes it wait for all the
work queued so far. This counts those ops while training steps run, by kind:

``item``
    ``aten._local_scalar_dense``: ``.item()``, ``int()`` / ``float()`` / ``bool()`` of a tensor,
    ``if tensor:``, ``max(tensor, n)`` ... Not counted for a host tensor: made from a Python literal
    (``aten.lift_fresh``), copied with ``.cpu()`` (counted there), or, on CUDA, any CPU tensor.
``nonzero``
    ``aten.nonzero`` (``torch.nonzero``, ``torch.where(cond)``, ``argwhere``).
``bool index``
    ``aten.index.Tensor`` with a boolean index (``x[mask]``); its backward is a ``bool index_put``.
``bool index_put``
    ``aten.index_put(_)`` / ``_index_put_impl_`` with a boolean index, except ``x[mask] = number``
    (CUDA's ``index_put_`` then runs ``masked_fill_``, which does not sync).
``masked_select``, ``unique`` (``aten.unique*``, ``_unique2``), ``repeat_interleave`` (the
``.Tensor`` overload without ``output_size``), ``equal``, ``bincount`` (its CUDA kernel reads the
input's maximum to size the output), ``histc`` (with ``min == max`` its CUDA kernel reads the
input's range), ``linalg check`` (``aten._linalg_check_errors``: ``torch.linalg.inv``, ``cholesky``
... raise on singular inputs, documented to synchronise on CUDA).
``to host``
    a copy of a device tensor to the host: ``.cpu()``, ``.tolist()``, ``.numpy()``. On CPU these
    dispatch nothing (every tensor already is on the host) and are counted as function calls by a
    ``TorchFunctionMode``; ``.to("cpu")`` is not, since on CPU it cannot be told from ``.to()`` the
    model's device (Detectron2 calls it on polygon masks' boxes only). On CUDA the aten copies
    (``aten._to_copy`` / ``copy_`` from CUDA to CPU) are counted instead, ``.to("cpu")`` included.

Counted separately, not in the total (the issue's count leaves them out), ``H2D``: a blocking copy
of host data to the device, which PyTorch ends with ``cudaStreamSynchronize`` (``copy_`` without
``non_blocking``), so it waits for the queue too. On CPU only tensors made from Python data on an
explicit device are seen (``torch.tensor`` / ``as_tensor`` / ``asarray`` with ``device=``,
``Tensor.new_tensor``); moving the batch (``.to(device)``) is not; on CUDA every such aten copy is.

Not syncs: ``aten.multinomial`` and ``torch.randperm`` (their CUDA kernels do not wait for the host),
``nonzero_static``, ``masked_fill``, ``where``, ``sort`` / ``argsort`` / ``topk``, ``gather`` /
``index_select`` / indexing with integer tensors and their backward (bounds are checked on the
device). A CPU run counts every op of the list even where a CUDA run would hold the operand on the
host (a tensor built on the CPU on purpose): an upper bound there.
"""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

__all__ = ["H2D", "SyncCounter", "count_host_syncs"]

# Call sites are printed relative to the repository (or site-packages).
_ROOT = Path(__file__).resolve().parents[2]

# Op kinds (see the module docstring); "bool index" / "bool index_put" are decided in SyncCounter.
_ALWAYS = {
    "_local_scalar_dense": "item",
    "nonzero": "nonzero",
    "nonzero_numpy": "nonzero",
    "is_nonzero": "item",
    "masked_select": "masked_select",
    "unique_consecutive": "unique",
    "unique_dim": "unique",
    "unique_dim_consecutive": "unique",
    "_unique": "unique",
    "_unique2": "unique",
    "equal": "equal",
    "bincount": "bincount",
    "_linalg_check_errors": "linalg check",
}
_INDEX_PUT = {"index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put"}
# Counted apart from the syncs of the issue (module docstring).
H2D = "H2D"
_FACTORIES = {"tensor", "as_tensor", "asarray"}


class _IdentitySet:
    """Tensors by identity (a ``WeakSet`` would compare tensors with ``==``, elementwise)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, obj) -> None:
        self._refs[id(obj)] = weakref.ref(obj)

    def __contains__(self, obj) -> bool:
        ref = self._refs.get(id(obj))
        return ref is not None and ref() is obj


def _is_bool(t) -> bool:
    import torch

    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


class SyncCounter:
    """Counts the ops that make a CUDA host wait, by kind, while active (``with SyncCounter(...):``);
    with ``trace``, also where each one is called from.

    A ``TorchDispatchMode`` sees the aten ops. On a CPU run a ``TorchFunctionMode`` also sees the
    copies to the host (``.cpu()``, ``.tolist()``, ``.numpy()``), which dispatch nothing there, and
    the tensors made from Python data on an explicit device (``H2D``); the result of ``.cpu()``
    then counts as a host tensor (no second sync for its ``.item()``, as on CUDA). On a CUDA run
    the aten copies themselves count.
    """

    def __init__(self, device: str = "cpu", trace: bool = False) -> None:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        self.kinds: Counter[str] = Counter()
        self.sites: Counter[tuple[str, str]] = Counter()
        self.trace = trace
        on_cpu = torch.device(device).type == "cpu"
        # Tensors a CUDA run would hold on the host: made from Python literals, or copied there.
        host = _IdentitySet()
        counter = self

        def kind_of(func, args, kwargs) -> str | None:
            name = func._schema.name.split("::")[-1]
            if name == "_local_scalar_dense":
                t = args[0]
                return None if t in host or (not on_cpu and t.device.type == "cpu") else "item"
            if name in _ALWAYS:
                return _ALWAYS[name]
            if name.startswith("unique"):
                return "unique"
            if name == "index" and any(_is_bool(i) for i in args[1]):
                return "bool index"
            if name in _INDEX_PUT and any(_is_bool(i) for i in args[1]):
                value = args[2]
                accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
                if not accumulate and value.numel() == 1 and value in host:
                    return None  # x[mask] = number: CUDA's index_put_ runs masked_fill_, no sync
                return "bool index_put"
            if name == "repeat_interleave" and func._overloadname == "Tensor":
                return None if kwargs.get("output_size") is not None else "repeat_interleave"
            if name == "histc":
                lo = args[3] if len(args) > 3 else kwargs.get("min", 0)
                hi = args[4] if len(args) > 4 else kwargs.get("max", 0)
                return "histc" if lo == hi else None
            if name in ("_to_copy", "copy_") and not on_cpu:
                src = args[1] if name == "copy_" else args[0]
                dst = args[0].device if name == "copy_" else kwargs.get("device")
                dst = src.device if dst is None else torch.device(dst)
                if src.device.type != "cpu" and dst.type == "cpu":
                    return "to host"
                non_blocking = args[2] if name == "copy_" and len(args) > 2 else kwargs.get("non_blocking")
                if src.device.type == "cpu" and dst.type != "cpu" and not non_blocking:
                    return H2D
            return None

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                kind = kind_of(func, args, kwargs)
                out = func(*args, **kwargs)
                if func is torch.ops.aten.lift_fresh.default:
                    host.add(out)
                if kind is not None:
                    counter._count(kind)
                return out

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                name = getattr(func, "__name__", "")
                # Not .to("cpu"): on a CPU run it cannot be told from .to(model's device).
                to_host = name in ("cpu", "tolist", "numpy", "__array__")
                if to_host and isinstance(args[0], torch.Tensor) and args[0] not in host:
                    counter._count("to host")
                    if isinstance(out, torch.Tensor):
                        host.add(out)
                if name == "new_tensor" and not isinstance(args[1], torch.Tensor):
                    counter._count(H2D)
                elif name in _FACTORIES and kwargs.get("device") is not None:
                    data = args[0] if args else kwargs.get("data")
                    if not isinstance(data, torch.Tensor):
                        counter._count(H2D)
                return out

        self._modes = [Dispatch()] + ([Functions()] if on_cpu else [])

    def _count(self, kind: str) -> None:
        self.kinds[kind] += 1
        if self.trace:
            self.sites[(kind, _call_site())] += 1

    def __enter__(self) -> SyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def _call_site() -> str:
    """The innermost frame outside torch of the current op; in a backward pass, of the forward call
    that made the graph node (anomaly mode records its stack)."""
    import torch

    node = torch._C._current_autograd_node()
    if node is not None:
        lines = "".join(node.metadata.get("traceback_", [])).splitlines()
        frames = [
            ln.strip()
            for ln in lines
            if ln.strip().startswith("File ") and "/torch/" not in ln and __file__ not in ln
        ]
        return "backward of " + (_short(frames[-1]) if frames else node.name())
    for frame in reversed(traceback.extract_stack()):
        if "/torch/" not in frame.filename and frame.filename != __file__:
            return _short(f'File "{frame.filename}", line {frame.lineno}, in {frame.name}')
    return "?"


def _short(line: str) -> str:
    for prefix in (str(_ROOT) + "/", "site-packages/"):
        if prefix in line:
            line = line.split(prefix, 1)[1]
    return line.replace('File "', "").replace('", line ', ":").replace(", in ", " ")


@contextlib.contextmanager
def count_host_syncs(device: str = "cpu") -> Iterator[Counter]:
    """``with count_host_syncs() as syncs: ...``: after the block, ``syncs`` holds the host-device
    synchronisations of the ops run inside, by kind (:class:`SyncCounter`; the blocking
    host-to-device copies, ``H2D``, are left out)."""
    syncs: Counter[str] = Counter()
    counter = SyncCounter(device)
    with counter:
        yield syncs
    syncs.update({kind: n for kind, n in counter.kinds.items() if kind != H2D})
