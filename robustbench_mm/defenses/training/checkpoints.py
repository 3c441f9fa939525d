"""Resumable checkpoints: weights, optimizer states and the step (safetensors + JSON, no pickle)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def save_checkpoint(path: Path, module: nn.Module, optimizers: dict[str, torch.optim.Optimizer], step: int,
                    extra: dict[str, Any]) -> None:
    """Atomically write weights, optimizer states and the step to ``path``."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(unshared(module.state_dict()), str(tmp / "weights.safetensors"))
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"step": step, "extra": extra, "optimizers": {}}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, Tensor):
                    tensors[f"{name}.{pid}.{k}"] = v.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        meta["optimizers"][name] = {"param_groups": sd["param_groups"], "scalars": scalars,
                                    "tensor_keys": sorted(k for k in tensors if k.startswith(name + "."))}
    save_file(tensors, str(tmp / "optim.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, default=float))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU copies safetensors accepts: tied weights (an LM head sharing the embedding) are stored
    twice rather than refused; ``load_state_dict`` ties them again."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().contiguous().cpu()
        key = (v.data_ptr(), v.shape)
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def load_checkpoint(path: Path, module: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> tuple[int, dict[str, Any]]:
    """Restore what ``save_checkpoint`` wrote; returns ``(next step, extra)``."""
    from safetensors.torch import load_file

    device = next(module.parameters()).device
    module.load_state_dict(load_file(str(path / "weights.safetensors"), device=str(device)))
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optim.safetensors"), device=str(device))
    for name, opt in optimizers.items():
        om = meta["optimizers"][name]
        state: dict[int, dict[str, Any]] = {}
        for key in om["tensor_keys"]:
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = tensors[key]
        for pid, st in om["scalars"].items():
            state.setdefault(int(pid), {}).update(st)
        opt.load_state_dict({"state": state, "param_groups": om["param_groups"]})
    return int(meta["step"]), dict(meta.get("extra", {}))
