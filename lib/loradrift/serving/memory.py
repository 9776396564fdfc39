"""Memory and storage: peak memory while a group of modes is loaded and served, bytes of models in
memory and of the files deployed."""
from __future__ import annotations

import gc
from pathlib import Path

import torch


def _rss_bytes() -> int:
    import psutil
    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_memory():
    """Collect garbage, empty the CUDA cache and hand freed heap pages back to the OS, so that the next
    group's RSS starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryMeter:
    """Peak memory while a mode is loaded and served: process RSS (peak mark reset at the start, baseline
    subtracted) and, on a GPU, ``torch.cuda.max_memory_allocated``."""

    def __enter__(self):
        release_memory()
        self.rss_base = _rss_bytes()
        self.hwm_ok = _reset_peak_rss()
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.cuda_base = torch.cuda.memory_allocated()
        return self

    def read(self) -> dict:
        peak = _peak_rss_bytes() if self.hwm_ok else None
        now = _rss_bytes()
        peak = max(peak or 0, now)
        out = {"rss_baseline_mb": self.rss_base / 2**20, "rss_peak_mb": peak / 2**20,
               "rss_peak_increase_mb": (peak - self.rss_base) / 2**20,
               "rss_peak_method": "VmHWM reset via /proc/self/clear_refs" if self.hwm_ok else "RSS at end (no peak mark)"}
        if self.cuda:
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["cuda_peak_increase_mb"] = (torch.cuda.max_memory_allocated() - self.cuda_base) / 2**20
        return out

    def __exit__(self, *exc):
        return False


def tensor_bytes(model) -> int:
    """Bytes of a model's parameters and buffers (or of several models, {name: model})."""
    models = model.values() if isinstance(model, dict) else [model]
    seen, total = set(), 0
    for m in models:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def weight_file_bytes(path: Path) -> int:
    """Bytes of the weight files (safetensors, bin) in a model or adapter folder."""
    path = Path(path)
    return int(sum(f.stat().st_size for p in ("*.safetensors", "*.bin") for f in path.glob(p) if f.is_file()))
