"""Every wrapper takes any selector and trains with its loss weighting: with
InfoBatch (which up-weights kept low-loss samples by ``1 / (1 - prune_ratio)``),
the loss that IESDataset.update, IESTrainer.compute_loss and IESCallback.update
return equals the hand-wired InfoBatch loss ``(losses * loss_weights(index)).mean()``
(the original's ``values.mul_(weights).mean()``), and IESCallback refuses the
returned-dict way of recording, which cannot reweight, by the selector's name."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ies_fast
from ies_fast.data import IndexedDataset

N, FEATURES, CLASSES, BATCH = 64, 8, 4, 16


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, FEATURES, generator=g), torch.randint(0, CLASSES, (N,), generator=g))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, CLASSES)


def infobatch_after_one_epoch(n: int = N) -> ies_fast.InfoBatch:
    """An InfoBatch whose next epoch prunes and up-weights: after one epoch of random losses."""
    return one_epoch(ies_fast.InfoBatch(n, num_epochs=4, prune_ratio=0.5))


def one_epoch(sel):
    n = sel.num_samples
    sel.observe(torch.rand(n, generator=torch.Generator().manual_seed(1)) * 3, torch.arange(n))
    sel.step()
    assert bool((sel.loss_weights(torch.arange(n)) > 1).any())
    return sel


def hand_wired(losses: torch.Tensor, sel, index: torch.Tensor) -> torch.Tensor:
    return (losses * sel.loss_weights(index)).mean()


def test_iesdataset_update_applies_infobatch_weights():
    net, sel = model(), infobatch_after_one_epoch()
    train_set = ies_fast.IESDataset(data(), net, selector=sel)
    loader = DataLoader(train_set, batch_size=BATCH, sampler=train_set.sampler)
    weighted = 0
    for x, y, index in loader:
        losses = F.cross_entropy(net(x), y, reduction="none")
        expected = hand_wired(losses, sel, index)
        weighted += int(not torch.equal(expected, losses.mean()))
        torch.testing.assert_close(train_set.update(losses, index), expected, rtol=0, atol=0)
    assert weighted > 0  # the weights changed some batch's loss: the plain mean would fail


def test_iestrainer_compute_loss_applies_infobatch_weights(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments

    from ies_fast.integrations.huggingface import IESTrainer
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hf_tiny

    n = 16
    examples = hf_tiny.sequences(n)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True,
                             disable_tqdm=True, save_strategy="no", logging_strategy="no")
    sel = ies_fast.InfoBatch(n, num_epochs=4, prune_ratio=0.5)
    trainer = IESTrainer(model=hf_tiny.tiny_gpt2(), args=args, train_dataset=examples, ies=sel)
    assert trainer.selector is one_epoch(sel)
    index = torch.arange(n)
    batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, {**batch, "index": index})
    logits = trainer.model(**batch).logits
    per_example = ies_fast.causal_lm_cross_entropy(logits, batch["labels"], reduction="sample")
    torch.testing.assert_close(loss, hand_wired(per_example, sel, index))
    assert not torch.allclose(loss, trainer.model(**batch).loss)  # the model's own loss is unweighted


class _Module:
    """A LightningModule (built lazily: lightning is optional) returning ``ies.update``'s loss."""

    @staticmethod
    def make(ies, record: str):
        import lightning

        class Linear(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.net, self.ies, self.checked = model(), ies, []

            def train_dataloader(self):
                return DataLoader(IndexedDataset(data()), batch_size=BATCH, shuffle=True)

            def training_step(self, batch, batch_idx):
                x, y, index = batch
                losses = F.cross_entropy(self.net(x), y, reduction="none")
                if record == "outputs":
                    return {"loss": losses.mean(), "per_sample_loss": losses}
                expected = hand_wired(losses, self.ies.selector, index)
                loss = self.ies.update(losses, index)
                self.checked.append((loss.detach(), expected.detach(), losses.mean().detach()))
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Linear()


def fit(record: str):
    import lightning

    from ies_fast.integrations.lightning import IESCallback

    ies = IESCallback(selector=infobatch_after_one_epoch())
    module = _Module.make(ies, record)
    trainer = lightning.Trainer(max_epochs=1, callbacks=[ies], accelerator="cpu", devices=1, logger=False,
                                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module)
    return module


def test_iescallback_update_applies_infobatch_weights():
    pytest.importorskip("lightning")
    module = fit("update")
    assert module.checked
    for loss, expected, _ in module.checked:
        torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert any(not torch.equal(expected, plain) for _, expected, plain in module.checked)


def test_iescallback_refuses_unweightable_outputs_by_name():
    pytest.importorskip("lightning")
    with pytest.raises(ValueError, match="InfoBatch reweights"):
        fit("outputs")
