"""Sparse-delta models: only the parameters that differ from the base, in one safetensors file.

Layout: for every changed parameter ``name``, its changed positions and ``name::value``
(the fine-tuned values, in the parameter's dtype: storing values rather than differences
makes applying exact). Positions are stored the cheapest way: ``name::gaps`` (uint16
distances between consecutive flat positions: about 2 bytes each) when changes are sparse,
``name::bits`` (a packed bitmap, one bit per entry) when more than 1 in 16 entries changed,
``name::index`` (int32 positions) in the rare case that is smaller, and nothing when more
than half changed (the tensor is stored whole). The JSON manifest sits in the file's metadata under
``fishdip_manifest``, so the artifact is a single file that ``safetensors`` (never pickle)
reads.

:class:`SharedBase` keeps one resident copy of a base for serving and swaps deltas in and
out of it: applying writes the delta's values at its indices, reverting writes the base's
values back, so switching models costs O(changed parameters), not a checkpoint load.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import MethodConfig
from .errors import BaseMismatch, CoreError
from .models import LoadedBase
from .tasks import TaskSpec
from .training import FitResult
from .version import __version__

FORMAT = "fishdip-delta/1"
MANIFEST_KEY = "fishdip_manifest"


@dataclass(frozen=True)
class DeltaInfo:
    path: str
    bytes: int
    parameters_changed: int
    sha256: str


@dataclass
class SparseDelta:
    manifest: dict[str, Any]
    # name -> (flat index, values); index None: the tensor is stored whole (values = all of it)
    tensors: dict[str, tuple[torch.Tensor | None, torch.Tensor]]

    @property
    def parameters_changed(self) -> int:
        return int(
            self.manifest.get("parameters_changed", sum(int(v.numel()) for _, v in self.tensors.values()))
        )

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec.from_dict(self.manifest["task"])


def diff(
    model: nn.Module, base: nn.Module
) -> tuple[dict[str, tuple[torch.Tensor | None, torch.Tensor]], int]:
    """Every entry whose bits differ from the base (so -0.0 vs 0.0 and NaN payloads count),
    and how many there are. A tensor with more than half its entries changed is kept whole:
    an index costs as much as a value, so that is smaller (full fine-tuning then stores no
    more than a checkpoint)."""
    ref = dict(base.named_parameters())
    out: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    total = 0
    for name, p in model.named_parameters():
        a = p.detach().to("cpu").reshape(-1)
        b = ref[name].detach().to("cpu").reshape(-1)
        changed = _bits(a) != _bits(b)
        n = int(torch.count_nonzero(changed))
        total += n
        if n > a.numel() // 2:
            out[name] = (None, a.clone())
        elif n:
            idx = changed.nonzero().squeeze(1)
            out[name] = (idx.to(torch.int32) if a.numel() < 2**31 else idx, a[idx].clone())
    return out, total


def _bits(t: torch.Tensor) -> torch.Tensor:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(ints[t.element_size()])


def save_delta(
    result: FitResult | nn.Module,
    base: LoadedBase,
    path: str | Path,
    spec: TaskSpec | None = None,
    method: MethodConfig | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> DeltaInfo:
    """Write the delta of a fine-tuned model against ``base`` atomically to ``path``."""
    model = result.model if isinstance(result, FitResult) else result
    if isinstance(result, FitResult):
        spec = spec or result.spec
        method = method or result.method
        metrics = metrics if metrics is not None else result.metrics
    if spec is None:
        raise CoreError("save_delta needs the task spec")
    with base.weights_lock:  # the base's own values, not a sparse fit's (core.training)
        tensors, changed = diff(model, base.model)
    flat: dict[str, torch.Tensor] = {}
    numel = {n: p.numel() for n, p in base.model.named_parameters()}
    for name, (idx, val) in tensors.items():
        if idx is not None:
            kind, positions = _encode_positions(idx, numel[name])
            flat[f"{name}::{kind}"] = positions
        flat[f"{name}::value"] = val.contiguous()
    manifest = {
        "format": FORMAT,
        "library_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "base": {
            "name": base.name,
            "family": base.family,
            "fingerprint": base.fingerprint,
            "parameters": base.parameter_count(),
        },
        "task": spec.to_dict(),
        "method": method.to_dict() if method else None,
        "training": result.config.to_dict() if isinstance(result, FitResult) else None,
        "metrics": dict(metrics or {}),
        "parameters_changed": changed,
        **dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp), metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
    os.replace(tmp, path)
    return DeltaInfo(str(path), path.stat().st_size, changed, _sha256(path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if MANIFEST_KEY not in meta:
        raise CoreError(f"{path} is not a fishdip delta (no manifest)")
    manifest: dict[str, Any] = json.loads(meta[MANIFEST_KEY])
    if manifest.get("format") != FORMAT:
        raise CoreError(f"unsupported delta format {manifest.get('format')!r}")
    return manifest


def load_delta(path: str | Path) -> SparseDelta:
    manifest = read_manifest(path)
    tensors: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for key in keys:
            name, kind = key.rsplit("::", 1)
            if kind != "value":
                continue
            index: torch.Tensor | None = None
            if f"{name}::index" in keys:
                index = f.get_tensor(f"{name}::index").long()
            elif f"{name}::gaps" in keys:
                index = _ungap(f.get_tensor(f"{name}::gaps"))
            elif f"{name}::bits" in keys:
                index = _unpack(f.get_tensor(f"{name}::bits"))
            tensors[name] = (index, f.get_tensor(key))
    return SparseDelta(manifest, tensors)


GAP_MAX = 2**16 - 1


def _encode_positions(idx: torch.Tensor, numel: int) -> tuple[str, torch.Tensor]:
    """The smallest encoding of sorted flat positions: ``index`` (int32 or int64 each),
    ``gaps`` (uint16 distances from the previous position, about 2 bytes each) or ``bits``
    (one bit per entry of the tensor)."""
    gaps = _gap(idx)
    options = [
        ("index", idx.numel() * idx.element_size()),
        ("gaps", gaps.numel() * 2),
        ("bits", (numel + 7) // 8),
    ]
    kind = min(options, key=lambda o: o[1])[0]
    if kind == "gaps":
        return kind, gaps
    return kind, (_pack(idx, numel) if kind == "bits" else idx.contiguous())


def _gap(idx: torch.Tensor) -> torch.Tensor:
    """Distances between consecutive positions (the first from -1), as uint16. A distance of
    more than 65535 is written as that many 0 tokens (each meaning "skip 65535") and the rest."""
    d = torch.diff(idx.long(), prepend=torch.tensor([-1]))
    skips = (d - 1) // GAP_MAX  # zeros before each entry, leaving a remainder in 1..65535
    rest = d - skips * GAP_MAX
    out = torch.zeros(int(idx.numel() + skips.sum()), dtype=torch.int64)
    out[torch.cumsum(skips + 1, 0) - 1] = rest
    return out.to(torch.uint16)


def _ungap(gaps: torch.Tensor) -> torch.Tensor:
    g = gaps.to(torch.int64)
    steps = torch.where(g == 0, GAP_MAX, g)
    return (torch.cumsum(steps, 0) - 1)[g != 0]


def _pack(idx: torch.Tensor, numel: int) -> torch.Tensor:
    bits = np.zeros(numel, dtype=np.uint8)
    bits[idx.long().numpy()] = 1
    return torch.from_numpy(np.packbits(bits))


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    bits = np.unpackbits(packed.numpy())
    return torch.from_numpy(np.flatnonzero(bits)).long()


def check_base(base: LoadedBase, delta: SparseDelta) -> None:
    want = delta.manifest["base"]
    if want["fingerprint"] != base.fingerprint:
        raise BaseMismatch(
            f"this delta was trained on base {want['name']!r} (fingerprint {want['fingerprint'][:12]}), "
            f"not on {base.name!r} (fingerprint {base.fingerprint[:12]})"
        )


def _write(model: nn.Module, delta: SparseDelta, values: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the delta's values (or ``values`` at the delta's indices) into ``model``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (idx, val) in delta.tensors.items():
            if name not in params:
                raise BaseMismatch(f"the base has no parameter {name!r}")
            flat = params[name].data.view(-1)
            new = (values[name] if values is not None else val).to(flat.device, flat.dtype)
            if idx is None:
                flat.copy_(new)
            else:
                flat.index_copy_(0, idx.to(flat.device), new)


def _base_values(model: nn.Module, delta: SparseDelta) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    out = {}
    for n, (i, _) in delta.tensors.items():
        flat = params[n].data.view(-1)
        out[n] = flat.clone() if i is None else flat.index_select(0, i.to(flat.device))
    return out


def apply_delta(base: LoadedBase, delta: SparseDelta) -> LoadedBase:
    """A fresh fine-tuned copy of the base (the base itself is not modified)."""
    check_base(base, delta)
    model = base.model_copy()
    _write(model, delta)
    model.eval()
    return base.bind(model)


class SharedBase:
    """One resident copy of a base's weights that serves many deltas in turn.

    The base's values at a delta's indices are gathered once, when the delta is first used,
    and dropped with the delta; a swap is then two index copies of the changed entries
    (revert the old delta, write the new one).

    ``use(delta)`` holds a lock while the caller predicts, so two models never run on the
    half-swapped weights. The last delta stays applied, so repeated requests to one model
    swap nothing.
    """

    def __init__(self, base: LoadedBase) -> None:
        self.base = base
        self.model = base.model_copy().eval()
        self.view = base.bind(self.model)
        self._lock = threading.Lock()
        self._active: SparseDelta | None = None
        self._restore: dict[int, dict[str, torch.Tensor]] = {}
        self.swaps = 0

    def _revert(self) -> None:
        if self._active is not None:
            _write(self.model, self._active, self._restore[id(self._active)])
            self._active = None

    def _remember(self, delta: SparseDelta) -> None:
        """Called with no delta applied: the resident copy then holds the base's values."""
        key = id(delta)
        if key not in self._restore:
            self._restore[key] = _base_values(self.model, delta)
            weakref.finalize(delta, self._restore.pop, key, None)

    @contextmanager
    def use(self, delta: SparseDelta | None) -> Iterator[LoadedBase]:
        with self._lock:
            if delta is not self._active:
                if delta is not None:
                    check_base(self.base, delta)
                self._revert()
                if delta is not None:
                    self._remember(delta)
                    _write(self.model, delta)
                    self._active = delta
                self.swaps += 1
            yield self.view
