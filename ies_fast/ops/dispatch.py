"""Every selector operation, routed to the backend :func:`ies_fast.backend.resolve`
picked (each op's routing lives in its own folder)."""
from .compact import compact
from .ring import close_epoch, has_record_nll, record, record_nll

__all__ = ["close_epoch", "compact", "has_record_nll", "record", "record_nll"]
