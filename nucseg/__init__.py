"""nucseg: nuclei instance segmentation in H&E histology (Mask R-CNN+ pipeline)."""
from nucseg._version import __version__

__all__ = ["__version__"]
