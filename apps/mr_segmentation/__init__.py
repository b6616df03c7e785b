"""mr_segmentation: brain structures and their volumes on a 3-D T1 MR series (demonstration model)."""

__version__ = "0.1.0"
