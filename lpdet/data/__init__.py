"""Data: COCO loading and checks, the embedded synthetic dataset, box-aware transforms."""
