"""Whether onnxruntime needs its exact int8 kernels on this CPU (`session.x64quantprecision`).

On x86 CPUs without VNNI (AVX2 only, or AVX-512 before VNNI) onnxruntime's fast u8 x s8 kernels
add pairs of products in 16 bits and saturate, so an int8 graph computes something else there
(logits up to ~50 quantization steps off, seen under AVX2 emulation); the session option makes
it use exact kernels instead. CPUs with a VNNI or AMX int8 dot product (`avx512_vnni`, `avx_vnni`,
`amx_int8` in /proc/cpuinfo's flags) accumulate in 32 bits and do not saturate, and there the
option is not needed; ARM CPUs (phones, boards) do not saturate either. When the flags cannot be
read on x86 the option is set: exact results matter more than speed.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

__all__ = ["NON_SATURATING_FLAGS", "needs_exact_int8_kernels", "cpu_flags"]

NON_SATURATING_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The `flags` of the first CPU in `cpuinfo`, or None when there is no such line to read."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in cpuinfo.read_text().splitlines():
            if line.split(":", 1)[0].strip() == "flags":
                return set(line.split(":", 1)[1].split())
    return None


def needs_exact_int8_kernels(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """True unless the CPU is known not to saturate u8 x s8 sums: an x86 CPU with VNNI or AMX
    int8 (from `flags`, default /proc/cpuinfo), or not an x86 CPU at all (`machine`, default
    `platform.machine()`)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine and machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not (flags and NON_SATURATING_FLAGS & set(flags))
