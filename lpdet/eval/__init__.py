"""Evaluation: COCO metrics through pycocotools, prediction drawing."""
