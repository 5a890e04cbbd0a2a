"""Jetson `tegrastats` lines → numbers: RAM, GPU load and frequency, every power rail.

Formats seen on JetPack 5/6 (Orin Nano/NX: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC; AGX Orin:
VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO; older modules: POM_5V_IN, …). Rails
print as `NAME current/average` in mW (JetPack ≥ 5) or `NAME current/average` with an `mW`
suffix.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

_RAM = re.compile(r"RAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"GR3D_FREQ (\d+)%(?:@\[?(\d+)\]?)?")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")


@dataclass
class TegraSample:
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    gpu_load_pct: int | None = None
    gpu_freq_mhz: int | None = None
    rails_mw: dict[str, int] = field(default_factory=dict)  # instantaneous power per rail
    time: float = field(default_factory=time.monotonic)  # when it was read


def parse_line(line: str) -> TegraSample:
    sample = TegraSample()
    if m := _RAM.search(line):
        sample.ram_used_mb, sample.ram_total_mb = int(m.group(1)), int(m.group(2))
    if m := _GR3D.search(line):
        sample.gpu_load_pct = int(m.group(1))
        sample.gpu_freq_mhz = int(m.group(2)) if m.group(2) else None
    for name, current, _average in _RAIL.findall(line):
        if name in ("RAM", "SWAP", "IRAM", "EMC_FREQ", "GR3D_FREQ", "CPU"):
            continue
        sample.rails_mw[name] = int(current)
    return sample


def input_rail(sample: TegraSample) -> str | None:
    """The rail that measures the whole module's input power, as each module names it."""
    for name in ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN", "VIN", "TOT"):
        if name in sample.rails_mw:
            return name
    return None


def energy_per_inference_mj(samples: list[TegraSample], throughput: float) -> float | None:
    """Mean input power (mW) over the samples divided by throughput (inferences/s) = mJ."""
    rail = input_rail(samples[0]) if samples else None
    if rail is None or throughput <= 0:
        return None
    readings = [s.rails_mw[rail] for s in samples if rail in s.rails_mw]
    return sum(readings) / len(readings) / throughput


class TegraStatsSampler:
    """Run `tegrastats --interval MS` in the background while a benchmark runs."""

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats"):
        if shutil.which(command) is None:
            raise FileNotFoundError(f"{command} not found: this is not a Jetson")
        self.command, self.interval_ms = command, interval_ms
        self.samples: list[TegraSample] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TegraStatsSampler:
        self._proc = subprocess.Popen(
            [self.command, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE, text=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples.append(parse_line(line))

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=1)
        time.sleep(0)


def sample_from_jtop(stats: dict) -> TegraSample:
    """jtop's flat `jetson.stats` dict ('GPU': load %, 'Power VDD_IN': mW, 'Power TOT': mW…)."""
    sample = TegraSample()
    gpu = stats.get("GPU")
    if isinstance(gpu, int | float):
        sample.gpu_load_pct = int(gpu)
    for key, value in stats.items():
        if isinstance(key, str) and key.startswith("Power ") and isinstance(value, int | float):
            sample.rails_mw[key.removeprefix("Power ")] = int(value)
    return sample


class JtopSampler:
    """Sample power through jetson-stats (`jtop`) where tegrastats cannot be run directly."""

    def __init__(self, interval_ms: int = 100):
        try:
            from jtop import jtop
        except ImportError as exc:
            raise FileNotFoundError("jtop (jetson-stats) is not installed") from exc
        self._jtop = jtop(interval=interval_ms / 1000)
        self.samples: list[TegraSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> JtopSampler:
        from ..errors import RmtDeployError

        try:
            self._jtop.start()
        except Exception as exc:  # jtop's own exception types; the service may be down
            raise RmtDeployError(
                f"jtop cannot start (is the jtop service running?): {exc}"
            ) from exc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stop.is_set() and self._jtop.ok():
            self.samples.append(sample_from_jtop(dict(self._jtop.stats)))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._jtop.close()


def power_sampler(interval_ms: int = 100) -> TegraStatsSampler | JtopSampler:
    """tegrastats if it is on PATH, else jtop; a clear error on machines with neither."""
    from ..errors import RmtDeployError

    try:
        return TegraStatsSampler(interval_ms)
    except FileNotFoundError:
        pass
    try:
        return JtopSampler(interval_ms)
    except FileNotFoundError:
        raise RmtDeployError(
            "power measurement needs a Jetson: neither tegrastats nor jtop (jetson-stats) "
            "is available here"
        ) from None
