"""What ``--precision auto``, channels_last auto and ``--workers auto`` mean on the machine at hand.

The decisions are pure functions of a :class:`Hardware` record so that a test can put any machine's facts in
(an AVX2-only EPYC, an AMX Xeon, a CUDA box) without touching torch; :func:`detect` reads the real facts once.
The figures behind each rule are in docs/benchmarks.md (figure 4) and docs/training.md ("Speed").
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from .registry import MedzooError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MAX_AUTO_WORKERS = 8
X86 = ("x86_64", "amd64", "i386", "i686")


@dataclass(frozen=True)
class Hardware:
    device: str = "cpu"  # torch device type: cpu | cuda | mps
    cpu_arch: str = "x86_64"  # platform.machine()
    cpu_capability: str = "DEFAULT"  # torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, SVE256, DEFAULT
    mkldnn_bf16: bool = False  # torch.ops.mkldnn._is_mkldnn_bf16_supported()
    bf16_instructions: bool = False  # x86: AVX512_BF16 or AMX tiles; ARM: the BF16 extension
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported() (Ampere and later)
    gpu_name: str = ""  # torch.cuda.get_device_name()
    cores: int = 1  # cores this process may run on (its affinity mask, not the machine's count)
    local_processes: int = 1  # training processes on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def cpu_bf16_native(self) -> bool:
        """bf16 matmuls/convolutions run on bf16 instructions, not emulated. oneDNN also reports bf16
        "supported" on AVX-512 CPUs without them (Skylake, Cascade Lake), where bf16 autocast measured slower
        than fp32; on AVX2-only CPUs it is 6-8x slower."""
        if not self.mkldnn_bf16 or not self.bf16_instructions:
            return False
        if self.cpu_arch.lower() in X86:
            return self.cpu_capability.upper().startswith("AVX512")
        return True

    def describe(self) -> str:
        if self.device == "cuda":
            return f"cuda {self.gpu_name}".strip() + (", bf16" if self.cuda_bf16 else ", no bf16")
        if self.device != "cpu":
            return self.device
        native = "native bf16" if self.cpu_bf16_native else "no native bf16"
        return f"cpu {self.cpu_arch} {self.cpu_capability}, {native}, {self.cores} cores"

    def to_dict(self) -> dict:
        return {**asdict(self), "cpu_bf16_native": self.cpu_bf16_native}


def detect(device: str = "cpu") -> Hardware:
    """The facts of this machine for a torch device type."""
    import torch

    arch = platform.machine()
    mkldnn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if arch.lower() in X86:
        cpu = getattr(torch, "cpu", None)
        isa = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                   or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    else:  # on ARM torch's mkldnn bf16 check is the BF16 extension itself
        isa = mkldnn
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    cuda = device == "cuda" and torch.cuda.is_available()
    cuda_bf16 = cuda and torch.cuda.is_bf16_supported()
    return Hardware(device=device, cpu_arch=arch, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                    mkldnn_bf16=mkldnn, bf16_instructions=isa, cuda_bf16=bool(cuda_bf16),
                    gpu_name=torch.cuda.get_device_name() if cuda else "", cores=cores,
                    local_processes=max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def precision(requested: str, hw: Hardware) -> str:
    """``auto``: CUDA bf16 where the GPU has it, else fp16 (with a GradScaler); CPU bf16 autocast only with
    native bf16 (:attr:`Hardware.cpu_bf16_native`), else fp32; MPS fp32."""
    if requested not in PRECISIONS:
        raise MedzooError(f"--precision must be bf16, fp16, fp32 or auto, not '{requested}'")
    if requested != "auto":
        return requested
    if hw.device == "cuda":
        return "bf16" if hw.cuda_bf16 else "fp16"
    if hw.device == "cpu":
        return "bf16" if hw.cpu_bf16_native else "fp32"
    return "fp32"


def channels_last(requested: bool | None, hw: Hardware, chosen_precision: str, transformer: bool) -> bool:
    """``transformer``: the architecture's ``ArchSpec.channels_last`` is False.
    Convolutional nets: on (resnet50 on CPU: 1.24x fp32, 1.4x under bf16 on AVX-512; 1.12x on AVX2).
    Transformers (Swin, ViT), whose only convolution is the patch embedding: on only in fp32 on CPU, where it
    measured neutral (0.98x, AVX-512) to faster (1.16x, AVX2); under bf16 autocast it cost 11%."""
    if requested is not None:
        return bool(requested)
    if not transformer:
        return True
    return hw.device == "cpu" and chosen_precision == "fp32"


def workers(requested: int | str | None, hw: Hardware) -> int:
    """``auto`` (None): on CUDA ``min(8, usable cores / processes on this machine)`` so the GPU is fed while
    each process keeps its share of the cores; on CPU and MPS 0, because workers then compete with the model
    for the same cores (0 measured fastest on CPU)."""
    if requested is None or requested == "auto":
        if hw.device != "cuda":
            return 0
        return max(1, min(MAX_AUTO_WORKERS, hw.cores // max(1, hw.local_processes)))
    text = str(requested).strip()
    if isinstance(requested, bool) or not text.isdigit():
        raise MedzooError(f"--workers must be a whole number >= 0 or auto, not '{requested}'")
    return int(text)
