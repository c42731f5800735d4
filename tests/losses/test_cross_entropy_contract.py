"""ies_fast.cross_entropy against F.cross_entropy over F's whole contract (class
weights, probability targets, K-dim input, ignore_index, reductions, dtypes, bad
input), first- and second-order gradients, on every backend (Triton interpreted
on CPU: small shapes), with each sample's recorded loss checked against the rule
of docs/semantics.md ("Per-sample loss of a sample with many positions")."""
import pytest
import torch
import torch.nn.functional as F

import ies_fast
from ies_fast import IES
from ies_fast.backend import native_usable

#: the native cases skip (as tests/ops/test_native.py does) when ies_fast._C is not built
NATIVE = pytest.param("native", marks=pytest.mark.skipif(not native_usable(torch.device("cpu")),
                                                          reason="native extension ies_fast._C not built"))
BACKENDS = ["torch", NATIVE, "triton"]
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def logits_like(shape, dtype, gen):
    """Random, non-zero logits with one large-magnitude sample."""
    x = torch.randn(shape, generator=gen) * 3 + torch.randn(shape[:1] + (1,) * (len(shape) - 1), generator=gen)
    x[0] *= 10
    return x.to(dtype)


def index_target(shape, C, gen, ignore_index=-100):
    t = torch.randint(0, C, shape, generator=gen)
    t[torch.rand(shape, generator=gen) < 0.25] = ignore_index
    return t


def prob_target(shape, gen):
    return torch.softmax(torch.randn(shape, generator=gen) * 2, dim=1)


def rule(input, target, weight=None, ignore_index=-100, label_smoothing=0.0):
    """The documented per-sample loss, from F.cross_entropy one sample at a time:
    F's 'mean' over the sample's own positions (NaN -> not recorded)."""
    out = []
    for b in range(input.shape[0]):
        out.append(
            F.cross_entropy(
                input[b : b + 1].double(), target[b : b + 1], weight=None if weight is None else weight.double(),
                ignore_index=ignore_index, label_smoothing=label_smoothing,
            )
        )
    return torch.stack(out)


def run(fn, x, upstream, **kw):
    x = x.detach().clone().requires_grad_()
    out = fn(x, **kw)
    (grad,) = torch.autograd.grad((out.double() * upstream).sum(), x)
    return out.detach(), grad


CASES = {
    # name: (input shape, target kind)
    "2d": ((7, 11), "index"),
    "kdim": ((3, 6, 4, 2), "index"),
    "probs": ((6, 9), "probs"),
    "probs_kdim": ((3, 5, 4), "probs"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_matches_torch_and_records_the_rule(backend, case, weighted, label_smoothing):
    shape, kind = CASES[case]
    gen = torch.Generator().manual_seed(hash((case, weighted, label_smoothing)) % 10_000)
    B, C = shape[0], shape[1]
    x = logits_like(shape, torch.float32, gen)
    target = index_target((B,) + shape[2:], C, gen) if kind == "index" else prob_target(shape, gen)
    if kind == "index":
        target.view(B, -1)[1] = -100  # one sample with nothing valid: not recorded
    weight = torch.rand(C, generator=gen) + 0.2 if weighted else None
    for reduction in ("none", "mean", "sum"):
        kw = dict(target=target, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
        upstream = torch.randn(F.cross_entropy(x, **kw).shape, generator=gen, dtype=torch.float64)
        sel = IES(B + 3, backend="torch")
        index = torch.randperm(B + 3, generator=gen)[:B]
        got, got_grad = run(ies_fast.cross_entropy, x, upstream, index=index, selector=sel, backend=backend, **kw)
        want, want_grad = run(F.cross_entropy, x, upstream, **kw)
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, **TOL[torch.float32])
        torch.testing.assert_close(got_grad, want_grad, **TOL[torch.float32])

        recorded = sel.hist[index, 0]
        expect = rule(x, target, weight, label_smoothing=label_smoothing).float()
        seen = torch.isfinite(expect)
        assert torch.equal(recorded > float("-inf"), seen)
        assert not seen.all() or kind == "probs"
        torch.testing.assert_close(recorded[seen], expect[seen], **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_dtypes(backend, dtype, kind):
    """fp64 exactly as torch; half types computed in fp32 and returned in the input dtype."""
    gen = torch.Generator().manual_seed(5 + (kind == "probs"))
    x = logits_like((6, 13), dtype, gen)
    target = index_target((6,), 13, gen) if kind == "index" else prob_target((6, 13), gen).to(dtype)
    upstream = torch.randn(6, generator=gen, dtype=torch.float64)
    got, got_grad = run(ies_fast.cross_entropy, x, upstream, target=target, reduction="none", backend=backend)
    want, want_grad = run(lambda x, **kw: F.cross_entropy(x.double(), target.double() if kind == "probs" else target, **kw),
                          x, upstream, reduction="none")
    assert got.dtype == dtype and got_grad.dtype == dtype
    torch.testing.assert_close(got, want.to(dtype), **TOL[dtype])
    torch.testing.assert_close(got_grad, want_grad.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_and_ignore_index(backend):
    gen = torch.Generator().manual_seed(3)
    x = logits_like((9,), torch.float32, gen)
    for t in (torch.tensor(4), prob_target((1, 9), gen)[0]):
        torch.testing.assert_close(ies_fast.cross_entropy(x, t, backend=backend), F.cross_entropy(x, t))
        assert ies_fast.cross_entropy(x, t, reduction="none", backend=backend).shape == ()
    x = logits_like((8, 5, 3), torch.float32, gen)
    t = index_target((8, 3), 5, gen, ignore_index=2)
    for r in ("mean", "sum", "none"):
        torch.testing.assert_close(
            ies_fast.cross_entropy(x, t, ignore_index=2, reduction=r, backend=backend),
            F.cross_entropy(x, t, ignore_index=2, reduction=r),
        )


def gradient_penalty_grads(loss_fn, W, x, target):
    """d/dW [loss + |d loss / dW|^2]: needs the gradient's own graph."""
    loss = loss_fn(x @ W, target)
    (g,) = torch.autograd.grad(loss, W, create_graph=True)
    (out,) = torch.autograd.grad(loss + g.square().sum(), W)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_second_order_gradients_match_torch(backend, label_smoothing):
    """Issue 11: a gradient penalty through the Triton kernel used to add nothing
    (its backward built no graph). fp32, the Triton path's dtype."""
    gen = torch.Generator().manual_seed(17)
    W = (torch.randn(6, 10, generator=gen) * 0.7).requires_grad_()
    x = torch.randn(12, 6, generator=gen) * 2
    target = index_target((12,), 10, gen)
    kw = dict(label_smoothing=label_smoothing)
    got = gradient_penalty_grads(lambda z, t: ies_fast.cross_entropy(z, t, backend=backend, **kw), W, x, target)
    want = gradient_penalty_grads(lambda z, t: F.cross_entropy(z, t, **kw), W, x, target)
    first = torch.autograd.grad(F.cross_entropy(x @ W, target, **kw), W)[0]
    assert not torch.allclose(want, first, atol=1e-3), "the penalty should change the gradient"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", NATIVE])
def test_gradgradcheck_fp64(backend):
    """Every option at once, fp64: first and second derivatives by finite differences."""
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(2, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    t = index_target((2, 2), 4, gen)
    t[0, 0] = 1
    w = torch.rand(4, dtype=torch.float64, generator=gen) + 0.5
    fn = lambda x: ies_fast.cross_entropy(  # noqa: E731
        x, t, weight=w, label_smoothing=0.1, lse_square_scale=1e-2, softcap=3.0, backend=backend
    )
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


BAD = [
    ("target batch", lambda x: (x, torch.zeros(3, dtype=torch.long)), {}),
    ("float target of the wrong shape", lambda x: (x, torch.rand(4)), {}),
    ("long probabilities", lambda x: (x, torch.zeros(4, 5, dtype=torch.long)), {}),
    ("target out of range", lambda x: (x, torch.tensor([0, 1, 7, 2])), {}),
    ("negative target", lambda x: (x, torch.tensor([0, -3, 1, 2])), {}),
    ("weight length", lambda x: (x, torch.zeros(4, dtype=torch.long)), {"weight": torch.ones(3)}),
    ("label_smoothing", lambda x: (x, torch.zeros(4, dtype=torch.long)), {"label_smoothing": 1.5}),
    ("ignore_index with probabilities", lambda x: (x, torch.rand(4, 5)), {"ignore_index": 0}),
    ("reduction", lambda x: (x, torch.zeros(4, dtype=torch.long)), {"reduction": "avg"}),
    ("k-dim target shape", lambda x: (x.view(4, 5, 1).expand(4, 5, 3), torch.zeros(4, 2, dtype=torch.long)), {}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,make,kw", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_what_torch_raises(backend, name, make, kw):
    x, t = make(torch.randn(4, 5))
    with pytest.raises(Exception) as want:
        F.cross_entropy(x, t, **kw)
    with pytest.raises(want.type):
        ies_fast.cross_entropy(x, t, backend=backend, **kw)


def test_own_arguments_name_themselves():
    x, t = torch.randn(4, 5), torch.zeros(4, dtype=torch.long)
    for kw, word in [
        (dict(sample_weight=torch.ones(3)), "sample_weight"),
        (dict(lse_square_scale=-1.0), "lse_square_scale"),
        (dict(softcap=0.0), "softcap"),
        (dict(selector=IES(4)), "index"),
        (dict(backend="cuda"), "backend"),
    ]:
        with pytest.raises(ValueError, match=word):
            ies_fast.cross_entropy(x, t, **kw)
    with pytest.raises(TypeError, match="target"):
        ies_fast.cross_entropy(x, [0, 1, 2, 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_targets_of_any_width(backend):
    """uint8 targets with class weights: indices, never a mask; int32, int16, int8
    and bool targets raise F's own RuntimeError (issue 23: they were silently taken)."""
    gen = torch.Generator().manual_seed(47)
    x = logits_like((6, 4, 3), torch.float32, gen)
    t = torch.randint(0, 4, (6, 3), generator=gen)
    w = torch.rand(4, generator=gen) + 0.1
    want = F.cross_entropy(x, t, weight=w)
    for dtype in (torch.uint8, torch.int64):
        torch.testing.assert_close(ies_fast.cross_entropy(x, t.to(dtype), weight=w, backend=backend), want)
    for dtype in (torch.int32, torch.int16, torch.int8, torch.bool):
        with pytest.raises(RuntimeError) as theirs:
            F.cross_entropy(x, t.to(dtype), weight=w)
        with pytest.raises(RuntimeError) as ours:
            ies_fast.cross_entropy(x, t.to(dtype), weight=w, backend=backend)
        assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_z_loss_and_softcap_have_liger_meaning(backend):
    """Liger's reference: logits capped as softcap * tanh(x / softcap); z-loss
    scale * lse^2 on non-ignored rows, averaged over them under 'mean'."""
    gen = torch.Generator().manual_seed(29)
    x = logits_like((10, 37), torch.float32, gen)
    t = index_target((10,), 37, gen)
    scale, cap = 1e-3, 5.0

    def liger_reference(x, target):
        z = cap * torch.tanh(x / cap)
        ce = F.cross_entropy(z, target)
        lse = torch.logsumexp(z, dim=-1)
        valid = target != -100
        return ce + (scale * lse.square() * valid).sum() / valid.sum()

    upstream = torch.tensor(1.0, dtype=torch.float64)
    got, got_grad = run(ies_fast.cross_entropy, x, upstream, target=t, lse_square_scale=scale, softcap=cap, backend=backend)
    want, want_grad = run(liger_reference, x, upstream, target=t)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(got_grad, want_grad, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_reduction_is_the_recorded_loss(backend):
    gen = torch.Generator().manual_seed(31)
    x = logits_like((5, 7, 6), torch.float32, gen)
    t = index_target((5, 6), 7, gen)
    w = torch.rand(7, generator=gen) + 0.1
    sel = IES(5, backend="torch")
    per_sample = ies_fast.cross_entropy(x, t, torch.arange(5), sel, weight=w, reduction="sample", backend=backend)
    torch.testing.assert_close(per_sample, rule(x, t, w).float())
    torch.testing.assert_close(sel.hist[:, 0], per_sample)


def test_cpu_path_is_fs_own_two_autograd_nodes():
    """The common CPU call (2-D logits, class indices) builds F.cross_entropy's graph,
    log_softmax then nll_loss, with nothing added for the selector's record."""
    gen = torch.Generator().manual_seed(37)
    x = torch.randn(16, 10, generator=gen, requires_grad=True)
    t = index_target((16,), 10, gen)
    sel = IES(20, backend="torch")
    for reduction in ("mean", "sum", "none"):
        out = ies_fast.cross_entropy(x, t, torch.arange(16), sel, reduction=reduction)
        assert type(out.grad_fn).__name__.startswith("NllLoss")
        (child, _), *_ = out.grad_fn.next_functions
        assert type(child).__name__ == "LogSoftmaxBackward0"
        assert child.next_functions[0][0].variable is x


@pytest.mark.parametrize("backend", [NATIVE, "triton"])
def test_second_order_with_every_option_matches_the_torch_backend(backend):
    """Class weights, smoothing, z-loss and soft-cap on K-dim input: the gradient
    penalty's gradient equals the torch backend's (itself gradgradchecked above)."""
    gen = torch.Generator().manual_seed(43)
    W = (torch.randn(6, 8, generator=gen) * 0.7).requires_grad_()
    x = torch.randn(4, 3, 6, generator=gen) * 2
    t = index_target((4, 3), 8, gen)
    w = torch.rand(8, generator=gen) + 0.3
    kw = dict(weight=w, label_smoothing=0.1, lse_square_scale=1e-2, softcap=4.0)

    def loss_fn(backend):
        return lambda z, target: ies_fast.cross_entropy(z.transpose(1, 2), target, backend=backend, **kw)

    got = gradient_penalty_grads(loss_fn(backend), W, x, t)
    want = gradient_penalty_grads(loss_fn("torch"), W, x, t)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
