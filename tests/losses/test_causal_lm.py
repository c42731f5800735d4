"""A tiny causal language model (built here) trained for a few epochs with IES
through ies_fast.causal_lm_cross_entropy: each sequence's recorded loss is its
mean token loss over valid (non-padding) next-token targets, the batch loss is
Hugging Face's (mean over the batch's valid tokens), on each backend."""
import pytest
import torch
import torch.nn.functional as F

import ies_fast
from ies_fast import IES

V, T, D = 23, 9, 16


class TinyCausalLM(torch.nn.Module):
    def __init__(self, gen_seed: int):
        super().__init__()
        torch.manual_seed(gen_seed)
        self.embed = torch.nn.Embedding(V, D)
        self.pos = torch.nn.Parameter(torch.randn(T, D) * 0.1)
        layer = torch.nn.TransformerEncoderLayer(D, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(D, V)

    def forward(self, ids):
        mask = torch.nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.head(self.blocks(self.embed(ids) + self.pos[: ids.shape[1]], mask=mask, is_causal=True))


def corpus(n, gen):
    """Sequences of random length, padded with token 0 whose labels are -100."""
    ids = torch.randint(1, V, (n, T), generator=gen)
    lengths = torch.randint(3, T + 1, (n,), generator=gen)
    pad = torch.arange(T) >= lengths[:, None]
    ids[pad] = 0
    labels = torch.where(pad, torch.full_like(ids, -100), ids)
    return ids, labels


def mean_token_losses(logits, labels):
    """Hand-written: each sequence's mean next-token loss over its valid targets."""
    out = []
    for b in range(logits.shape[0]):
        out.append(F.cross_entropy(logits[b, :-1].double(), labels[b, 1:], ignore_index=-100))
    return torch.stack(out).float()


@pytest.mark.parametrize("backend,epochs", [("torch", 3), ("triton", 2)])  # interpreted Triton is slow
def test_tiny_causal_lm_records_mean_token_losses(backend, epochs):
    gen = torch.Generator().manual_seed(0)
    N, B = 16, 8
    ids, labels = corpus(N, gen)
    labels[5, :] = -100  # a sequence with no valid target: never recorded
    model = TinyCausalLM(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sel = IES(N, delta=1e-3, order=1, window=1, backend="torch")
    for epoch in range(epochs):
        for index in torch.randperm(N, generator=gen).split(B):
            logits = model(ids[index])
            loss = ies_fast.causal_lm_cross_entropy(logits, labels[index], index, sel, backend=backend)
            hf = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[index][:, 1:].reshape(-1), ignore_index=-100)
            torch.testing.assert_close(loss, hf, atol=1e-5, rtol=1e-5)
            slot = sel.count[index].long() % sel.history_length
            recorded = sel.hist[index, slot]
            want = mean_token_losses(logits.detach(), labels[index])
            seen = torch.isfinite(want)
            assert torch.equal(recorded > float("-inf"), seen)
            torch.testing.assert_close(recorded[seen], want[seen], atol=1e-5, rtol=1e-5)
            opt.zero_grad()
            loss.backward()
            opt.step()
        first = loss.item() if epoch == 0 else first
        sel.step()
    assert loss.item() < first, "a few steps of training should lower the loss"
    assert sel.stats()["observed"] == N - 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_reductions_and_gradients(backend):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, T, V, generator=gen) * 2
    _, labels = corpus(4, gen)
    for shift in (True, False):
        lg, lb = (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)
        x1 = logits.clone().requires_grad_()
        x2 = logits.clone().requires_grad_()
        per_token = ies_fast.causal_lm_cross_entropy(x1, labels, shift=shift, reduction="none", backend=backend)
        want = F.cross_entropy(
            x2[:, :-1].transpose(1, 2) if shift else x2.transpose(1, 2), lb, reduction="none"
        )
        torch.testing.assert_close(per_token, want, atol=1e-5, rtol=1e-5)
        w = torch.randn(want.shape, generator=gen)
        (per_token * w).sum().backward()
        (want * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
        sample = ies_fast.causal_lm_cross_entropy(logits, labels, shift=shift, reduction="sample", backend=backend)
        valid = (lb != -100).float()
        torch.testing.assert_close(sample, (want.detach() * valid).sum(1) / valid.sum(1), atol=1e-5, rtol=1e-5)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="logits"):
        ies_fast.causal_lm_cross_entropy(torch.randn(4, V), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        ies_fast.causal_lm_cross_entropy(torch.randn(2, T, V), torch.zeros(2, T + 1, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        ies_fast.causal_lm_cross_entropy(torch.randn(2, T, V), torch.zeros(2, T))
