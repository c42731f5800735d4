"""Reading and writing what outlives a process: checkpoints (``checkpoint.py``,
verified before anything is loaded; saved states are validated by
``ies_fast/checks.py``), the process group (``distributed.py``), and run-folder file IO
that treats what it reads as untrusted (``run_folder.py``: no write through a link,
regular files only, bounded JSON)."""
