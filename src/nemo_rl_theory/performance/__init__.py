"""Performance & Scaling: the library code behind ``docs/advanced/performance`` and ``docs/advanced/performance-scaling``."""
