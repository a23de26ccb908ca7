"""ILSVRC2012: the devkit, torchvision's meta.bin, and synthetic archives of the real shape."""
