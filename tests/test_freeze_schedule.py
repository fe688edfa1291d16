"""A freeze policy's learning-rate scales are applied at every epoch (not only epoch 0's), keeping the
optimizer's state, and a run killed between epochs resumes with the same groups and identical weights."""

import pytest
import torch
from safetensors.torch import load_file

import medzoo
from medzoo import store
from medzoo.registry import FreezePolicySpec, registry
from medzoo.stage import StageTrainer

TINY = ["epochs=3", "image_size=32", "batch_size=32", "augment=none"]
HEAD = ("fc.weight", "fc.bias")


def _halving(model, *, arg=None, epoch=0, epochs=1, n_train=0):
    """Everything trains; the backbone's lr halves every epoch, the head's stays."""
    for p in model.parameters():
        p.requires_grad_(True)
    return {n: (1.0 if n in HEAD else 0.5 ** epoch) for n, _ in model.named_parameters()}


@pytest.fixture
def halving():
    registry().add("policies", FreezePolicySpec(name="halving", apply=_halving, description="test only"), "tests")


@pytest.fixture
def seen(monkeypatch):
    """Per epoch: each parameter's lr and Adam step count as the epoch starts."""
    epochs = []
    original = StageTrainer._train_epoch

    def spy(self, net, opt, sched, scaler, criterion, amp_dtype, channels_last, epoch):
        names = {id(p): n for n, p in self.model.named_parameters()}
        lrs = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
        steps = {names[id(p)]: float(s["step"]) for p, s in opt.state.items() if "step" in s}
        # the schedule keeps one entry per group (ReduceLROnPlateau's min_lrs: IndexError before torch 2.6)
        per_group = [len(getattr(sched, k)) for k in ("min_lrs", "base_lrs", "lr_lambdas") if hasattr(sched, k)]
        assert per_group and set(per_group) == {len(opt.param_groups)}
        epochs.append((epoch, lrs, steps, len(opt.param_groups)))
        return original(self, net, opt, sched, scaler, criterion, amp_dtype, channels_last, epoch)

    monkeypatch.setattr(StageTrainer, "_train_epoch", spy)
    return epochs


@pytest.mark.parametrize("schedule", ["constant", "cosine", "plateau"])
def test_lr_scales_returned_at_every_epoch_are_applied(halving, seen, schedule):
    medzoo.train("resnet18", "scratch,phantom_lesion", precision="fp32",
                 overrides=TINY + ["freeze=halving", f"schedule={schedule}", "warmup_epochs=0", "lr=0.002"])
    assert [e for e, *_ in seen] == [0, 1, 2]
    base = None
    for epoch, lrs, steps, groups in seen:
        # the backbone's lr relative to the head's follows the policy (the schedule's factor is common)
        assert lrs["conv1.weight"] / lrs["fc.weight"] == pytest.approx(0.5 ** epoch)
        assert lrs["layer4.1.bn2.bias"] / lrs["fc.bias"] == pytest.approx(0.5 ** epoch)
        if schedule == "constant":
            assert lrs["fc.weight"] == pytest.approx(0.002)
        assert groups == (2 if epoch == 0 else 4)  # (scale, weight decay) groups
        if epoch:  # Adam's state survived the regrouping: step counts go on from the last epoch
            assert steps["conv1.weight"] == steps["fc.weight"] > 0
            assert base is None or steps["conv1.weight"] > base
            base = steps["conv1.weight"]


def test_resume_between_epochs_with_changing_lr_scales_gives_identical_weights(halving, monkeypatch, tmp_path):
    over = TINY + ["freeze=halving"]
    name = "resnet18.scratch-phantom_lesion"
    monkeypatch.setenv("MEDZOO_HOME", str(tmp_path / "clean"))
    medzoo.train("resnet18", "scratch,phantom_lesion", overrides=over, precision="fp32")
    clean = load_file(str(store.checkpoints_dir() / name / store.WEIGHTS))

    monkeypatch.setenv("MEDZOO_HOME", str(tmp_path / "killed"))
    original = StageTrainer._train_epoch

    def dies_in_epoch_3(self, *args):
        if args[-1] == 2:
            raise KeyboardInterrupt  # after epochs 1 and 2 were saved, with the regrouped optimizer
        return original(self, *args)

    monkeypatch.setattr(StageTrainer, "_train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        medzoo.train("resnet18", "scratch,phantom_lesion", overrides=over, precision="fp32")
    monkeypatch.setattr(StageTrainer, "_train_epoch", original)
    medzoo.train("resnet18", "scratch,phantom_lesion", overrides=over, precision="fp32")
    resumed = load_file(str(store.checkpoints_dir() / name / store.WEIGHTS))
    assert clean.keys() == resumed.keys() and all(torch.equal(clean[k], resumed[k]) for k in clean)
