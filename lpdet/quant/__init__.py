"""Quantization: quantization-aware training and post-training quantization."""
