"""usam-ray: semantic labels for whole datasets with Segment Anything, on Ray."""

__version__ = "0.1.0"
