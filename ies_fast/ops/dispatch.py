"""Every selector operation, routed to the backend :func:`ies_fast.backend.resolve`
picked (each op's routing lives in its own folder)."""
from .compact import compact
from .ring import close_epoch, epoch_report, has_record_nll, record, record_nll

__all__ = ["close_epoch", "compact", "epoch_report", "has_record_nll", "record", "record_nll"]
