"""lpdet: design low-power object detectors (MobileNet-SSD/SSDLite, QAT, latency-aware design)."""

__version__ = "0.1.0"
