"""`format=tar`: train straight from the original ILSVRC2012 archives, with no extracted file.

Both image archives are uncompressed tars (the train tar a tar of class tars), so every image is one
contiguous byte range of the original file. This package holds the core:

- `launcher.tarformat.index` (no torch): the nested index of a train or val tar, built by byte ranges
  of outer members in one sequential read (md5 included when asked), merged in torchvision's order,
  and its compact binary file (offsets, sizes, targets, names, the archive's identity), read back
  with bounds;
- `launcher.tarformat.overlay` (no torch): replacement files in the state folder for samples a fix
  re-encodes (a PNG named .JPEG, a CMYK JPEG), keyed by sample index;
- `launcher.tarformat.listed` (no torch): the index of an archive a file list names (Places365's
  train tree and list-labelled val tar, launcher.sources.tree's shapes), by the same byte ranges,
  in the list's order: a `listed` TarIndex;
- `launcher.tarformat.dataset` (torch): `TarSamples`, reading each sample with one positional read
  from an archive descriptor each process opens once, and `TarImageNet`, the interface of
  `launcher.data.ImageNet` over it (Places365's is launcher.datasets.places365.tardataset).
"""
