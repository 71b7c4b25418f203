"""The one owner of device decisions: which device, which dtype, and what to do when memory runs out."""

from __future__ import annotations

import gc
import logging
import os

import torch

log = logging.getLogger(__name__)


class Device:
    """The accelerator the worker runs on, picked once at start-up.

    `auto` prefers CUDA (float16), then Apple's MPS, then the CPU (float32:
    half precision on the CPU is slow and, for some ops, unsupported).
    """

    def __init__(self, preference: str = "auto") -> None:
        if preference == "auto":
            if torch.cuda.is_available():
                preference = "cuda"
            elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                preference = "mps"
            else:
                preference = "cpu"
        self.torch_device = torch.device(preference)
        if self.torch_device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} was asked for, but CUDA is not available")
        self.dtype = torch.float16 if self.torch_device.type in {"cuda", "mps"} else torch.float32

    @property
    def type(self) -> str:
        return self.torch_device.type

    def describe(self) -> str:
        if self.type == "cuda":
            idx = self.torch_device.index or 0
            return f"cuda:{idx} ({torch.cuda.get_device_name(idx)}, {self.dtype})".replace("torch.", "")
        return f"{self.torch_device} ({self.dtype})".replace("torch.", "")

    def batch_pixels(self) -> int:
        """How many output pixels one pipeline call may make at once (n x width x height).

        Memory grows with the batch: 16 images of 2048 px took a CPU engine to 9 GB at step 0, and
        out-of-memory is not reliably raised on a CPU. One megapixel (four 512 px images) per call on
        a CPU, four on a GPU; the OOM fallback still halves what the estimate lets through.
        """
        return 4 * 1024 * 1024 if self.type in {"cuda", "mps"} else 1024 * 1024

    def model_budget(self) -> int:
        """Bytes of model weights worth keeping loaded at once when `model_cache_gb` is not set.

        Half the GPU's memory (the rest is for activations: an SDXL batch needs several GB), or a
        quarter of the RAM on a CPU or a Mac (their weights live in system memory).
        """
        if self.type == "cuda":
            return torch.cuda.get_device_properties(self.torch_device).total_memory // 2
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4

    def memory_allocated(self) -> int | None:
        """Bytes allocated on the GPU now (CUDA; None elsewhere: the model cache's bytes say it on a CPU)."""
        return torch.cuda.memory_allocated(self.torch_device) if self.type == "cuda" else None

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        """True for the errors that mean 'try a smaller batch', on any device."""
        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            return True
        text = str(exc)
        return isinstance(exc, RuntimeError) and (
            "out of memory" in text or "can't allocate memory" in text or "MPS backend out of memory" in text
        )

    def free_memory(self) -> None:
        """Release cached blocks after an out-of-memory error or an unload."""
        gc.collect()
        if self.type == "cuda":
            torch.cuda.empty_cache()
        elif self.type == "mps":
            torch.mps.empty_cache()
