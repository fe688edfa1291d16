"""Speed defaults decided from the hardware (precision, channels_last, DataLoader workers) and the training
loop's loss bookkeeping, which no longer reads the loss back from the device at every step."""

import json

import pytest
import torch
from conftest import run_cli

import medzoo
from medzoo import recipe as mzrecipe
from medzoo import speed, store
from medzoo.data import open_dataset
from medzoo.lineage import Lineage, SourceRecord
from medzoo.registry import MedzooError, registry
from medzoo.stage import Parent, Runtime, StageTrainer

# the two kinds of CPU the issue measured, as torch reports them
EPYC_AVX2 = speed.Hardware(device="cpu", cpu_arch="x86_64", cpu_capability="AVX2", mkldnn_bf16=False,
                           bf16_instructions=False, cores=2)
XEON_AMX = speed.Hardware(device="cpu", cpu_arch="x86_64", cpu_capability="AVX512", mkldnn_bf16=True,
                          bf16_instructions=True, cores=2)
# AVX-512 without bf16 instructions (Skylake/Cascade Lake): oneDNN says bf16 "works", but emulated
SKYLAKE = speed.Hardware(device="cpu", cpu_arch="x86_64", cpu_capability="AVX512", mkldnn_bf16=True,
                         bf16_instructions=False, cores=16)
GRAVITON3 = speed.Hardware(device="cpu", cpu_arch="aarch64", cpu_capability="SVE256", mkldnn_bf16=True,
                           bf16_instructions=True, cores=8)


def test_auto_precision_uses_bf16_on_cpu_only_where_it_is_native():
    assert speed.precision("auto", EPYC_AVX2) == "fp32"
    assert speed.precision("auto", SKYLAKE) == "fp32"
    assert speed.precision("auto", XEON_AMX) == "bf16"
    assert speed.precision("auto", GRAVITON3) == "bf16"
    # an ISA-capped process (ATEN_CPU_CAPABILITY=avx2) runs ATen's bf16 kernels without AVX-512
    assert speed.precision("auto", speed.Hardware(**{**XEON_AMX.__dict__, "cpu_capability": "AVX2"})) == "fp32"
    assert speed.precision("auto", speed.Hardware(device="cuda", cuda_bf16=True)) == "bf16"
    assert speed.precision("auto", speed.Hardware(device="cuda", cuda_bf16=False)) == "fp16"
    assert speed.precision("auto", speed.Hardware(device="mps")) == "fp32"
    assert speed.precision("bf16", EPYC_AVX2) == "bf16"  # asked for explicitly: obeyed
    with pytest.raises(MedzooError, match="--precision must be"):
        speed.precision("fp8", XEON_AMX)


def test_channels_last_follows_the_arch_and_the_chosen_precision():
    for hw in (EPYC_AVX2, XEON_AMX):
        assert speed.channels_last(None, hw, speed.precision("auto", hw), transformer=False)
    # Swin/ViT: on in fp32 on CPU (neutral to 1.16x), off under bf16 autocast (0.89x) and on GPUs
    assert speed.channels_last(None, EPYC_AVX2, "fp32", transformer=True)
    assert not speed.channels_last(None, XEON_AMX, "bf16", transformer=True)
    assert not speed.channels_last(None, speed.Hardware(device="cuda", cuda_bf16=True), "bf16", transformer=True)
    assert not speed.channels_last(False, EPYC_AVX2, "fp32", transformer=False)


def test_workers_auto_feeds_a_gpu_from_the_cores_and_stays_0_on_cpu():
    assert speed.workers(None, speed.Hardware(device="cpu", cores=32)) == 0
    assert speed.workers("auto", speed.Hardware(device="mps", cores=10)) == 0
    assert speed.workers(None, speed.Hardware(device="cuda", cores=16)) == 8
    assert speed.workers("auto", speed.Hardware(device="cuda", cores=4)) == 4
    assert speed.workers(None, speed.Hardware(device="cuda", cores=16, local_processes=8)) == 2  # torchrun, 8 GPUs
    assert speed.workers(None, speed.Hardware(device="cuda", cores=2, local_processes=4)) == 1
    assert speed.workers(3, speed.Hardware(device="cpu")) == 3
    assert speed.workers("2", speed.Hardware(device="cuda", cores=16)) == 2
    for bad in (-1, "x", "1.5", True):
        with pytest.raises(MedzooError, match="--workers must be"):
            speed.workers(bad, speed.Hardware())


def test_cli_workers_flag_refuses_junk_before_anything_runs():
    proc = run_cli("train", "resnet18", "--stages", "scratch,phantom_lesion", "--workers", "lots", check=False)
    assert proc.returncode != 0 and "'lots' is not a whole number >= 0 or auto" in proc.stderr
    assert not (store.checkpoints_dir()).exists() or not any(store.checkpoints_dir().iterdir())


def test_lineage_records_the_precision_actually_used():
    results = medzoo.train("resnet18", "scratch,phantom_lesion",
                           overrides=["epochs=1", "image_size=32", "batch_size=32"])
    lineage = json.loads((results[-1].path / store.CONFIG).read_text())["medzoo"]
    runtime = lineage["stages"][-1]["runtime"]
    hw = speed.detect("cpu")
    assert runtime["precision"] == speed.precision("auto", hw) and runtime["precision"] != "auto"
    assert runtime["channels_last"] is True and runtime["workers"] == 0
    assert hw.cpu_capability in runtime["hardware"]


class _Batches:
    """An in-memory loader with what the trainer asks of one."""

    sampler = None

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_epoch_loss_is_the_sample_weighted_mean_of_the_step_losses():
    """The loss is summed on the device and read once: the epoch's figure is still each step's loss weighted
    by its batch size (a short last batch counts less), as when it was read back at every step."""
    source = open_dataset("phantom_lesion")
    recipe = mzrecipe.resolve("phantom_lesion", {}, {}, {"phantom_lesion": {"image_size": 32, "batch_size": 4,
                                                                            "freeze": "full", "augment": "none"}},
                              ["phantom_lesion"])
    arch = registry().resolve("archs", "resnet18")
    parent = Parent("resnet18", "resnet18", None, "scratch", None,
                    Lineage(arch="resnet18", source=SourceRecord(name="scratch")), "scratch")
    trainer = StageTrainer(arch, parent, "phantom_lesion", source, recipe, Runtime(precision="fp32"), "t", "0" * 64)
    g = torch.Generator().manual_seed(0)
    trainer.gen = torch.Generator()
    trainer.train_loader = _Batches([(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 2, (n,), generator=g))
                                     for n in (4, 4, 3)])
    opt = trainer._optimizer(trainer._apply_policy(0))
    sched = trainer._scheduler(opt, 3)
    seen = []
    ce = torch.nn.CrossEntropyLoss()

    def criterion(out, y):
        loss = ce(out, y)
        seen.append((loss.item(), len(y)))
        return loss

    got = trainer._train_epoch(trainer.model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), criterion,
                               None, False, 0)
    assert [n for _, n in seen] == [4, 4, 3]
    total = 0.0
    for loss, n in seen:
        total += loss * n
    assert got == total / 11  # float64 on the device: the same sum Python's floats gave
