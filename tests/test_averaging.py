"""HeadAverage: validation, checkpoints and the fitted module hold the moving average of the
head's weights; the backbone is left out; the raw weights keep training."""

import pytorch_lightning as pl
import torch
from helpers import quiet_trainer, tiny_whisper
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ensemble.core.averaging import HeadAverage
from whisper_head.model import WhisperHeadModel
from whisper_head.module import WhisperHeadModule


class Toy(HeadAverage, pl.LightningModule):
    def __init__(self, decay):
        super().__init__()
        self.backbone = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(3, 1)
        self.average_decay, self.average_skip = decay, ("backbone.",)
        self.seen_in_validation = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.head(self.backbone(x)), y)

    def validation_step(self, batch, batch_idx):
        self.seen_in_validation.append(self.head.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Raw(pl.Callback):
    """The raw head weights after every optimizer step."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append(module.head.weight.detach().clone())


def _ema(start, steps, decay):
    average = start.clone()
    for t, w in enumerate(steps, 1):
        d = min(decay, (1 + t) / (10 + t))
        average = average + (1 - d) * (w - average)
    return average


def test_validation_checkpoints_and_the_fitted_module_hold_the_average(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    module = Toy(decay=0.9)
    start, backbone = module.head.weight.detach().clone(), module.backbone.weight.detach().clone()
    raw, ckpt = Raw(), ModelCheckpoint(dirpath=tmp_path, save_weights_only=True, save_last=True)
    trainer = quiet_trainer(
        max_epochs=2, callbacks=[raw, ckpt], enable_checkpointing=True, num_sanity_val_steps=0
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=32))
    assert len(raw.steps) == 16
    first, final = _ema(start, raw.steps[:8], 0.9), _ema(start, raw.steps, 0.9)
    torch.testing.assert_close(module.seen_in_validation[0], first)  # epoch 1 scored the average
    torch.testing.assert_close(module.seen_in_validation[1], final)
    torch.testing.assert_close(module.head.weight.detach(), final)  # kept after fit
    assert not torch.allclose(final, raw.steps[-1])  # and it is not the raw weights
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(saved["head.weight"], final)
    # the backbone trains but is not averaged: the module and the checkpoint hold its raw weights
    assert not torch.equal(module.backbone.weight, backbone)
    torch.testing.assert_close(saved["backbone.weight"], module.backbone.weight.detach())


def test_off_by_default_and_the_whisper_head_averages_its_head_only():
    torch.manual_seed(0)
    module = Toy(decay=None)
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    raw = Raw()
    trainer = quiet_trainer(max_epochs=1, callbacks=[raw], enable_checkpointing=False)
    trainer.fit(module, DataLoader(data, batch_size=4))
    torch.testing.assert_close(module.head.weight.detach(), raw.steps[-1])
    whisper = WhisperHeadModule(
        WhisperHeadModel(tiny_whisper(layer_weights=True, clip_head=True, clip_pool="attention")),
        freeze="encoder",
        head_average=0.99,
    )
    names = set(whisper._averaged())
    assert names and not any(n.startswith("model.backbone.") for n in names)
    assert any(n.startswith("model.head.") for n in names) and "model.layer_logits" in names
