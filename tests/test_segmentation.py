"""Segmentation: UNet / Swin UNETR encoders from classification stages, Dice+CE, the chain end to end."""

from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

import medzoo
from medzoo import models, store
from medzoo.metrics import DiceCELoss
from medzoo.registry import MedzooError, registry

ENCODERS = ["resnet18", "resnet50", "densenet121", "mobilenetv2", "mobilenetv3", "efficientnet_b0", "swin_t"]


def _randomised_classifier(arch, img_size=64):
    """A classifier whose every tensor holds distinct random values, so each can be recognised elsewhere."""
    model = medzoo.create_model(arch, num_classes=5, img_size=img_size)
    torch.manual_seed(0)
    return {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def _fingerprints(state):
    return Counter((tuple(v.shape), hash(v.float().numpy().tobytes())) for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("arch", ENCODERS)
def test_unet_encoder_receives_every_backbone_tensor(arch, capsys):
    cls = _randomised_classifier(arch)
    ref = registry().resolve("archs", f"unet_{arch}")
    unet = models.build(ref, num_classes=3, img_size=64)
    transfer = ref.spec.load_parent(unet, cls, keep_head=False, origin="test")
    encoder = {k: v for k, v in unet.state_dict().items() if k.startswith("encoder.")}
    assert f"matched {len(encoder)}/{len(encoder)} encoder tensors" in str(transfer)
    # by value: every encoder tensor is one of the classifier's, and only the head (and a final norm) is left over
    left = _fingerprints(cls) - _fingerprints(encoder)
    assert not (_fingerprints(encoder) - _fingerprints(cls))
    classifier = models.build(registry().resolve("archs", arch), num_classes=5, img_size=64)
    # only what comes after the last feature stage may stay behind: the classifier, a final norm or 1×1 conv head
    after_features = ("fc.", "head.", "classifier.", "norm.", "conv_head.", "bn2.")
    assert not (left - _fingerprints({k: v for k, v in cls.items() if k.startswith(after_features)}))
    assert not (_fingerprints({k: cls[k] for k in models.classifier_names(classifier)}) - left)  # …the classifier does
    with torch.no_grad():
        assert unet(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_swin_unetr_maps_swin_t_blocks_and_reports_the_share():
    cls = _randomised_classifier("swin_t", img_size=224)  # window 7 in every stage, as swin_unetr has
    ref = registry().resolve("archs", "swin_unetr")
    net = models.build(ref, num_classes=2, img_size=64)
    transfer = str(ref.spec.load_parent(net, cls, keep_head=False, origin="test"))
    assert "swinViT tensors" in transfer and "% of its parameters" in transfer
    own = net.state_dict()
    assert torch.equal(own["swinViT.layers3.0.blocks.5.mlp.linear2.weight"], cls["layers.2.blocks.5.mlp.fc2.weight"])
    assert torch.equal(own["swinViT.layers2.0.downsample.reduction.weight"],
                       cls["layers.2.downsample.reduction.weight"])
    assert not torch.equal(own["swinViT.patch_embed.proj.weight"][:, :, :2, :2],
                           cls["patch_embed.proj.weight"][:, :, :2, :2])
    with pytest.raises(MedzooError, match="not a Swin-T classifier"):
        ref.spec.load_parent(net, _randomised_classifier("resnet18"), keep_head=False, origin="resnet18 weights")
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    code = ref.spec.hub_layout.plain_code("lab/x", num_classes=2, in_chans=3, image_size=64)
    assert "SwinUNETR(" in code and "feature_size=96" in code  # what the model card tells MONAI users to build
    groups = models.block_groups(net, ref.spec.group_prefixes)  # encoder, decoder (everything else), head
    assert len(groups) == 3 and all(n.startswith("swinViT.") for n in groups[0])
    assert all(n.startswith("out.") for n in groups[2])
    assert not any(n.startswith(("swinViT.", "out.")) for n in groups[1])
    for bad in (48, 32):  # 32 builds, but its 1×1 bottleneck fails in training: refused up front
        with pytest.raises(MedzooError, match="multiple of 32 and at least 64"):
            models.build(ref, num_classes=2, img_size=bad)


def test_dice_ce_ignores_the_ignore_code():
    torch.manual_seed(0)
    target = torch.randint(1, 4, (2, 8, 8))
    target[:, :3] = 0  # outside the ROI
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss = DiceCELoss(ignore_index=0)
    base = loss(logits, target)
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn(2, 4, 3, 8) * 10  # whatever the model says outside the ROI
    assert torch.allclose(loss(changed, target), base)
    base.backward()
    assert logits.grad[:, :, :3].abs().max() == 0 and logits.grad[:, :, 3:].abs().max() > 0


def test_segmentation_chain_end_to_end_and_load(capsys):
    results = medzoo.train("unet_resnet18", "scratch,phantom_agg,phantom_lesion_seg",
                           overrides=["epochs=1", "image_size=32"], precision="fp32")
    assert [r.name for r in results] == ["resnet18.scratch-phantom_agg",
                                         "unet_resnet18.scratch-phantom_agg-phantom_lesion_seg"]
    assert "matched 120/120 encoder tensors" in capsys.readouterr().out
    ckpt = store.get_local(results[1].name)
    assert ckpt.lineage.task == "segmentation" and ckpt.lineage.arch == "unet_resnet18"
    stage = ckpt.lineage.stages[-1]
    assert {"dice", "iou", "dice_lesion", "iou_lesion"} <= set(stage.val_metrics) and stage.best["metric"] == "dice"
    assert (ckpt.path / "predictions.png").stat().st_size > 0
    # the encoder started from stage 1's weights
    parent = load_file(str(store.get_local(results[0].name).path / store.WEIGHTS))
    assert stage.parent_sha256 == results[0].weights_sha256 and "conv1.weight" in parent
    model = medzoo.load(results[1].name)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    # the shared classification stage is the plain resnet18 chain's: reused, not retrained
    again = medzoo.train("resnet18", "scratch,phantom_agg", overrides=["epochs=1", "image_size=32"], precision="fp32")
    assert again[0].reused


def test_task_mismatch_errors_point_to_the_right_arch():
    with pytest.raises(MedzooError, match="segmentation dataset but 'resnet18' is a classification architecture; "
                                          "use 'unet_resnet18'"):
        medzoo.train("resnet18", "scratch,phantom_lesion_seg", overrides=["epochs=1"])
    with pytest.raises(MedzooError, match="'swin_unetr' has no classification counterpart|swin_t"):
        medzoo.train("swin_unetr", "scratch,phantom_agg,phantom_lesion_seg", overrides=["epochs=1"])
