"""LightningModules this package did not write (or written the way users write them), for the foreign-module battery.

Module-level classes and functions only, so everything pickles under ``ddp_spawn``. Each module brings its own
data (``train_dataloader``), as a user's module would; all are tiny so the whole battery stays fast.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.demos import LightningTransformer, Transformer
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

VOCAB = 11
BLOCK = 6


class RandomTokens(Dataset):
    """Random token streams shaped like the demo's WikiText2 items: ``(inputs, target)`` with target = next token."""

    def __init__(self, num_blocks: int = 32, block_size: int = BLOCK, vocab: int = VOCAB, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, vocab, (num_blocks * block_size + 1,), generator=g)
        self.block_size = block_size
        self.num_blocks = num_blocks

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        return self.data[start : start + self.block_size], self.data[start + 1 : start + self.block_size + 1]


class TinyTransformer(LightningTransformer):
    """Lightning's demo ``LightningTransformer`` (its forward, training_step and optimizer), with tiny dimensions and
    random tokens instead of the WikiText2 download of its ``prepare_data``/``train_dataloader``."""

    def __init__(self, vocab_size: int = VOCAB, ninp: int = 8, nhid: int = 16, nlayers: int = 1) -> None:
        super().__init__(vocab_size=vocab_size)
        self.model = Transformer(vocab_size=vocab_size, ninp=ninp, nhead=2, nhid=nhid, nlayers=nlayers)

    def prepare_data(self) -> None:  # the demo downloads WikiText2 here
        pass

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomTokens(), batch_size=4)


class RegressionDictModule(pl.LightningModule):
    """Linear regression with MSE; ``training_step`` returns a dict (loss plus an extra entry).

    The loss is quadratic in the weights, so its Hessian is known: ``2/N [X 1]^T [X 1]``.
    """

    def __init__(self, dim: int = 4, n: int = 64) -> None:
        super().__init__()
        self.dim, self.n = dim, n
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        pred = self(x)
        loss = F.mse_loss(pred, y)
        self.log("train_mse", loss)
        return {"loss": loss, "pred_mean": pred.detach().mean()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(self.n, self.dim, generator=g)
        y = x @ torch.arange(1.0, self.dim + 1).unsqueeze(1) + 0.1 * torch.randn(self.n, 1, generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=8)


def _blobs(n: int = 64, dim: int = 6, classes: int = 3, seed: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + 0.5 * torch.randn(n, dim, generator=g), y


class ManualClassifier(pl.LightningModule):
    """Manual optimization with one optimizer; returns the (detached) loss from ``training_step``."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        self.log("train_loss", loss)
        return loss.detach()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*_blobs()), batch_size=8)


class TwoOptimizerAutoencoder(pl.LightningModule):
    """An autoencoder with one optimizer for the encoder and one for the decoder (manual optimization, as Lightning
    requires for several optimizers); its batches are single tensors without targets."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.encoder = nn.Sequential(nn.Linear(6, 3), nn.Tanh())
        self.decoder = nn.Linear(3, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        opt_enc, opt_dec = self.optimizers()  # type: ignore[misc]
        loss = F.mse_loss(self(batch), batch)
        opt_enc.zero_grad()
        opt_dec.zero_grad()
        self.manual_backward(loss)
        opt_enc.step()
        opt_dec.step()
        return {"loss": loss.detach()}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.encoder.parameters(), lr=0.1), torch.optim.Adam(self.decoder.parameters(), 1e-2)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_blobs()[0], batch_size=8)


class AutoencoderWithLandscapeLoss(TwoOptimizerAutoencoder):
    """The same autoencoder, telling landscape probes its loss through the documented optional method."""

    def landscape_loss(self, batch: Tensor) -> Tensor:
        return F.mse_loss(self(batch), batch)


def reconstruction_loss(module: nn.Module, batch: Tensor) -> Tensor:
    """A loss of the contract ``loss_fn(module, batch)``, importable by path for YAML."""
    return F.mse_loss(module(batch), batch)


class ParamGroupsClassifier(pl.LightningModule):
    """Automatic optimization, one optimizer with two parameter groups (different LRs) and a StepLR scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.SGD(
            [{"params": self.body.parameters(), "lr": 0.05}, {"params": self.head.parameters(), "lr": 0.1}],
            momentum=0.9,
        )
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*_blobs()), batch_size=8)


class DictDataset(Dataset):
    def __init__(self) -> None:
        self.x, self.y = _blobs()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"features": self.x[i], "label": self.y[i]}


class DictBatchClassifier(pl.LightningModule):
    """Batches are dicts ``{"features": x, "label": y}``; ``forward(features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch["features"]), batch["label"])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(DictDataset(), batch_size=8)


#: name -> factory of every module in the battery (BoringModel as Lightning ships it).
MODULES: dict[str, type[pl.LightningModule]] = {
    "boring": BoringModel,
    "transformer": TinyTransformer,
    "regression_dict": RegressionDictModule,
    "manual": ManualClassifier,
    "two_optimizers": TwoOptimizerAutoencoder,
    "param_groups": ParamGroupsClassifier,
    "dict_batches": DictBatchClassifier,
}
