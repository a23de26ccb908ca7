"""prepare: archives -> the root a torchvision dataset class reads, as small idempotent units."""
