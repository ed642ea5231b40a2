"""Research & Validation: statistics and provenance for ``docs/advanced/research`` and ``research-validation``."""
