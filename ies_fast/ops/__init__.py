"""Device operations behind the selectors and the loss, one folder per op (``ring``,
``cross_entropy``, ``compact``), each with its plain-torch reference and its Triton
kernels side by side; the native (``ies_fast._C``) ops are routed in the folder's
``__init__``. :mod:`ies_fast.backend` picks the path."""
