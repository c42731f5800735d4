"""The application on top of the library: the ``ies-fast`` command (``cli.py``), the
reference training loop and its recipes (``train/``), the demo, plots and the
benchmark runner. The library (everything outside ``app/``) never imports it."""
