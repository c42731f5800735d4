"""Reading and writing what outlives a process: checkpoints (``checkpoint.py``,
verified before anything is loaded), the validation of saved states
(``state_checks.py``), and the process group (``distributed.py``)."""
