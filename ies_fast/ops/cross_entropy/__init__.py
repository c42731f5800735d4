"""Per-position cross-entropy with the selector's per-sample rule: ``reference.py``
is the plain-torch semantics (F.cross_entropy's values and gradients), ``triton.py``
the fused Triton kernel (forward + backward, optional direct ring write). The
public loss is :func:`ies_fast.cross_entropy` (``ies_fast/losses``)."""
