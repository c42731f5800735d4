"""Device operations behind the selector, each with a plain-torch implementation
and, where available, Triton or native (``ies_fast._C``) fast paths chosen by
:mod:`ies_fast.backend`."""
