"""What machine a number was measured on: CPU model, the ISA features that decide CNN inference speed,
core count and load average.

Every benchmark (``sonograde bench ...``, ``sonograde calibrate verify``) and ``sonograde run``'s start and
end summary print ``machine_line()``, so that a speed is never read without the CPU it was taken on and
how busy that CPU was. The features named are the ones ONNX Runtime's CPU kernels dispatch on: AVX2 and
FMA (FP32 and the baseline INT8 path), AVX-512F, and the INT8 dot-product instructions AVX-512 VNNI and
AVX-VNNI (without one of them INT8 convolutions gain far less over FP32), and AMX (Intel's matrix tiles).

Torch-free and dependency-free (Linux ``/proc/cpuinfo``; elsewhere the CPU model from ``platform`` and no
feature list), low in the layers so that calibration and sonograde both use it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

# /proc/cpuinfo flag -> the name a reader knows it by, in the order they are printed.
ISA_FEATURES: dict[str, str] = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class MachineInfo:
    """One machine at one moment.

    cpu : the CPU model ("model name" in /proc/cpuinfo), or what ``platform`` says where there is none.
    isa : the ``ISA_FEATURES`` flags present, in that order (empty where they cannot be read).
    flags_known : whether the CPU's feature flags could be read at all (False: ``isa`` says nothing).
    logical_cpus : logical CPUs of the machine (``os.cpu_count()``).
    usable_cpus : logical CPUs this process may run on (its affinity mask; a container may allow fewer).
    load_avg : 1, 5 and 15 minute load averages (runnable processes), or None where the OS has none.
    """

    cpu: str
    isa: tuple[str, ...]
    flags_known: bool
    logical_cpus: int
    usable_cpus: int
    load_avg: tuple[float, float, float] | None

    @property
    def has_vnni(self) -> bool:
        """Whether the CPU has an INT8 dot-product instruction (AVX-512 VNNI or AVX-VNNI)."""
        return any(flag in self.isa for flag in VNNI_FLAGS)

    @property
    def isa_text(self) -> str:
        """The features by their usual names, with "no VNNI" said outright (it decides INT8 speed)."""
        if not self.flags_known:
            return "ISA unknown"
        names = [ISA_FEATURES[flag] for flag in self.isa]
        if not self.has_vnni:
            names.append("no VNNI")
        return "ISA " + " ".join(names)

    @property
    def load_text(self) -> str:
        if self.load_avg is None:
            return "load average unknown"
        return "load average " + " ".join(f"{value:.2f}" for value in self.load_avg)

    def line(self) -> str:
        """One line for a report: ``machine: CPU; N logical CPUs; ISA ...; load average 1m 5m 15m``
        (``description()`` is the same without the ``machine:`` label)."""
        return f"machine: {self.description()}"

    def description(self) -> str:
        """``CPU; N logical CPUs; ISA ...; load average 1m 5m 15m``."""
        cpus = f"{self.logical_cpus} logical CPUs"
        if self.usable_cpus != self.logical_cpus:
            cpus += f" ({self.usable_cpus} usable by this process)"
        return f"{self.cpu}; {cpus}; {self.isa_text}; {self.load_text}"

    def as_dict(self) -> dict:
        """JSON-ready: cpu, isa (the flag names), vnni, logical_cpus, usable_cpus, load_avg."""
        return {"cpu": self.cpu, "isa": list(self.isa), "vnni": self.has_vnni if self.flags_known else None,
                "logical_cpus": self.logical_cpus, "usable_cpus": self.usable_cpus,
                "load_avg": None if self.load_avg is None else [round(v, 2) for v in self.load_avg]}

    @classmethod
    def from_dict(cls, data: dict) -> MachineInfo:
        """The inverse of ``as_dict`` (a report read back)."""
        load = data.get("load_avg")
        return cls(cpu=str(data["cpu"]), isa=tuple(data.get("isa") or ()),
                   flags_known=data.get("vnni") is not None,
                   logical_cpus=int(data["logical_cpus"]), usable_cpus=int(data["usable_cpus"]),
                   load_avg=None if load is None else tuple(float(v) for v in load))  # type: ignore[arg-type]


def parse_cpuinfo(text: str) -> tuple[str | None, set[str] | None]:
    """The CPU model and the feature flags of the first processor in a ``/proc/cpuinfo`` text.

    Returns (model or None, flags or None). x86 names them "model name" and "flags"; ARM kernels say
    "Features" (and may have no model line at all).
    """
    model: str | None = None
    flags: set[str] | None = None
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if not separator:
            continue
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and flags is None:
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def describe_machine(cpuinfo_text: str | None = None) -> MachineInfo:
    """The machine now (``cpuinfo_text``: a ``/proc/cpuinfo`` text to read instead of this machine's)."""
    text = _read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    model, flags = parse_cpuinfo(text) if text else (None, None)
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    logical = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = logical
    try:
        load = tuple(float(v) for v in os.getloadavg())
    except (AttributeError, OSError):  # Windows
        load = None
    return MachineInfo(cpu=model, isa=tuple(flag for flag in ISA_FEATURES if flags and flag in flags),
                       flags_known=flags is not None, logical_cpus=logical, usable_cpus=usable,
                       load_avg=load)  # type: ignore[arg-type]


def machine_line() -> str:
    """``describe_machine().line()``: CPU, ISA features, CPUs and load average, for a report."""
    return describe_machine().line()


__all__ = ["ISA_FEATURES", "MachineInfo", "describe_machine", "machine_line", "parse_cpuinfo"]
