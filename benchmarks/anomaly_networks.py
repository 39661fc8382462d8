"""Networks of the anomaly comparison: a backbone as two feature maps (moments at stride 16, the
last map for pooling), CutPaste fine-tuning with Lightning, and feature extraction."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.cutpaste import CutPaste
from anomaly.model import ResNet18
from anomaly.moments import frequency_moments
from ensemble.core.efficientnet import EfficientNetLite0, load_pretrained, normalize

log = logging.getLogger("anomaly_comparison")


class Backbone(nn.Module):
    """A network as two feature maps of a `(B, 3, H, W)` image in [0, 1] (ImageNet-normalised
    inside): `moment_map` at stride 16 and `last`, the last map, globally pooled for "pooled"."""

    def __init__(self, kind: str, width: int = 16, pretrained: bool = False):
        super().__init__()
        self.kind = kind
        if kind == "efficientnet":
            self.net = load_pretrained() if pretrained else EfficientNetLite0()
            self.dim = self.net._conv_head.out_channels
        elif kind == "resnet":
            self.net = ResNet18(width)
            self.dim = self.net.out_dim
        else:
            raise ValueError(f"kind must be efficientnet or resnet, got {kind!r}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images `(B, 3, H, W)` -> (moment map `(B, C, H / 16, W / 16)`, last map `(B, D, h, w)`)."""
        x = normalize(x)
        if self.kind == "efficientnet":
            outs = self.net.forward_stages(x)
            head = self.net
            return outs[4], head.act(head._bn1(head._conv_head(outs[-1])))
        r = self.net
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        moment = r.layer3(r.layer2(r.layer1(x)))
        return moment, r.layer4(moment)


class CutPasteFineTune(pl.LightningModule):
    """CutPaste training of a backbone: normal crops (label 0) against the same crops with a
    pasted patch (label 1), a linear classifier on the globally pooled last map.

    `freeze_bn`: BatchNorm layers keep their (pretrained) statistics, as usual when fine-tuning
    with small batches.
    """

    def __init__(self, backbone: Backbone, lr: float, freeze_bn: bool, seed: int = 0):
        super().__init__()
        self.backbone, self.lr, self.freeze_bn = backbone, lr, freeze_bn
        self.classifier = nn.Linear(backbone.dim, 2)
        self.cutpaste = CutPaste()
        self.generator = torch.Generator().manual_seed(seed)
        self.seconds, self.images, self._t0 = 0.0, 0, 0.0

    def train(self, mode: bool = True) -> CutPasteFineTune:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def on_train_batch_start(self, batch: Tensor, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: Tensor, batch_idx: int) -> None:
        # after backward and the optimiser step: the whole step but the data loading
        self.seconds += time.perf_counter() - self._t0
        self.images += 2 * len(batch)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = torch.cat([batch, self.cutpaste(batch, self.generator)])  # (2B, 3, H, W)
        y = torch.cat([torch.zeros(len(batch)), torch.ones(len(batch))]).long().to(self.device)
        logits = self.classifier(self.backbone(x)[1].mean(dim=(2, 3)))
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"loss": loss, "acc": acc}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class Crops(torch.utils.data.Dataset):
    """Random `crop`-column crops of images `(3, H, w)`; narrower ones padded with silence (0)."""

    def __init__(self, imgs: list[Tensor], crop: int, steps: int, batch_size: int, seed: int):
        self.imgs, self.crop, self.n = imgs, crop, steps * batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        img = self.imgs[int(self.rng.integers(len(self.imgs)))]
        if img.shape[-1] < self.crop:
            return F.pad(img, (0, self.crop - img.shape[-1]))
        start = int(self.rng.integers(img.shape[-1] - self.crop + 1))
        return img[..., start : start + self.crop]


def train_cutpaste(backbone: Backbone, imgs: list[Tensor], args, pretrained: bool) -> dict:
    """CutPaste training in place; returns its time and throughput."""
    pl.seed_everything(args.seed, verbose=False)
    module = CutPasteFineTune(
        backbone, args.lr_pretrained if pretrained else args.lr_scratch, pretrained, args.seed
    )
    data = torch.utils.data.DataLoader(
        Crops(imgs, args.crop, args.steps, args.batch_size, args.seed), batch_size=args.batch_size
    )
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=args.progress,
    )
    t0 = time.perf_counter()
    trainer.fit(module, data)
    acc = float(trainer.callback_metrics.get("acc", math.nan))
    log.info(
        "trained %d steps in %.0f s, last batch acc %.2f", args.steps, time.perf_counter() - t0, acc
    )
    backbone.cpu().eval()
    return {
        "train_s": time.perf_counter() - t0,
        "train_images_per_s": module.images / max(module.seconds, 1e-9),
        "train_acc": acc,
    }


@torch.inference_mode()
def features(backbone: Backbone, imgs: list[Tensor]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pooled features `(N, D)` and moments `(t_i, C)` per image, one image at a time."""
    backbone.eval()
    pooled, moments = [], []
    for img in imgs:
        moment_map, last = backbone(img[None])
        pooled.append(last.mean(dim=(2, 3))[0].numpy())
        moments.append(frequency_moments(moment_map)[0].numpy())
    return np.stack(pooled), moments
