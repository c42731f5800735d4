"""Shared check of the CLI tests: ``ies-fast`` ends with one line on stderr and exit 2."""
from ies_fast.app.cli import main


def one_line_error(capsys, argv, *needles) -> str:
    """Run ``main(argv)`` in-process; assert exit 2 and a single stderr line (no
    traceback) containing every needle; return that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err
