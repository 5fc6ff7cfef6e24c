"""Models: MobileNet backbones, SSD/SSDLite heads, anchors, box coder, loss, post-processing."""
