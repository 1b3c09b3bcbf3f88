"""The arithmetic training runs in (``train.precision``), chosen from what this machine's processor can do.

Machines differ between runs of the same pipeline, so the CPU's features are read when training starts, never
assumed. On the CPU, bf16 autocast pays only where the cores multiply bf16 natively (AVX512-BF16 or AMX); elsewhere
oneDNN emulates it and it is slower than fp32, so ``auto`` keeps fp32 there and an explicit ``bf16`` is refused. On
CUDA, ``auto`` and ``bf16`` use mixed precision: bf16 where the GPU has it, else fp16 with loss scaling (``auto``
only). ``fp32`` is the reference everywhere: no autocast, the same arithmetic as without this module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ultraseg.params import ParamsError

BF16_FEATURES = ("avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic; one of them makes bf16 autocast worth using."""
RECORDED_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
"""The flags that decide how fast training arithmetic runs, recorded with each stage's metrics."""


def cpu_features() -> tuple[str, ...]:
    """Which of :data:`RECORDED_FEATURES` this machine's CPU reports, in that order; none where there is no
    ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return ()
    return tuple(f for f in RECORDED_FEATURES if f in flags)


def cpu_has_bf16(features: tuple[str, ...]) -> bool:
    return any(f in features for f in BF16_FEATURES)


@dataclass(frozen=True)
class Precision:
    """A resolved ``train.precision``: ``name`` (``fp32``, ``bf16`` or ``fp16``) on ``device_type``, and the CPU
    features it was chosen from."""

    name: str
    device_type: str
    cpu_features: tuple[str, ...]

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for fp32 (no autocast)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, which fp16 needs against underflowing gradients; a pass-through otherwise."""
        return torch.amp.GradScaler("cuda", enabled=self.name == "fp16")

    def record(self) -> dict:
        """The stage metrics' ``precision`` and ``cpu_features``."""
        return {"precision": self.name, "cpu_features": list(self.cpu_features)}


def resolve(requested: str, device: torch.device, features: tuple[str, ...] | None = None) -> Precision:
    """``requested`` (``auto``, ``fp32``, ``bf16``) made concrete for ``device``; ``features`` default to this
    CPU's. Raises ParamsError, naming the key and what is missing, for bf16 the hardware cannot do."""
    features = cpu_features() if features is None else features
    if requested == "fp32":
        return Precision("fp32", device.type, features)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "cuda", features)
        if requested == "bf16":
            raise ParamsError("train.precision: bf16 needs a GPU with bf16 support; this one has none "
                              "(use auto for fp16 mixed precision, or fp32)")
        return Precision("fp16", "cuda", features)
    if cpu_has_bf16(features):
        return Precision("bf16", device.type, features)
    if requested == "bf16":
        raise ParamsError(f"train.precision: bf16 needs a CPU with {' or '.join(BF16_FEATURES)}; this one has "
                          f"{', '.join(features) or 'neither'} (use auto or fp32)")
    return Precision("fp32", device.type, features)
