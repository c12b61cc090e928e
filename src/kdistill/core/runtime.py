"""Where and how to compute: the device, the precision, and the numerics a promise of exact results needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kdistill.errors import ConfigError

# cuBLAS is deterministic only with a fixed workspace (PyTorch's "Reproducibility" notes); it reads
# this when its first handle is created, so it must be set before the first CUDA matrix product.
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Native bf16 arithmetic (AVX-512 BF16 or AMX) on this CPU, from the kernel's flag list."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    @property
    def input_dtype(self) -> torch.dtype:
        """What the first convolution computes in: under autocast it rounds its fp32 input to this."""
        return self.autocast_dtype or torch.float32

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """``auto`` picks CUDA, then MPS, then CPU; bf16 where the hardware computes it natively."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is 'mps' but MPS is not available")
    native_bf16 = {
        "cuda": lambda: torch.cuda.is_bf16_supported(),
        "cpu": cpu_has_bf16,
        "mps": lambda: False,
    }[device]()
    if precision == "auto":
        precision = "bf16" if native_bf16 else "fp32"
    return Runtime(torch.device(device), torch.bfloat16 if precision == "bf16" else None)


def make_reproducible(runtime: Runtime) -> None:
    """Make a CUDA training repeat bit for bit, and fp32 mean IEEE fp32; nothing to do on a CPU.

    CUDA picks convolution and reduction kernels that race (atomics) unless deterministic
    algorithms are demanded, and computes "fp32" convolutions and matrix products in TF32 by
    default. Both would break the resume promise (a resumed run continues the same digits) and the
    meaning of ``train.precision: fp32``. A process-wide setting, so the stage's entry calls it,
    once, before the first CUDA kernel.
    """
    if runtime.device.type != "cuda":
        return
    os.environ.setdefault(*CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
