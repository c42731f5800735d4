"""Training helpers: `compare` (several selectors, same data and seeds)."""
