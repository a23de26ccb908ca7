"""What torchvision 0.29's `torchvision.datasets.Places365` reads, and what the real archives hold.

torchvision reads `root/categories_places365.txt` and `root/places365_<split>.txt` (md5-checked even
with download=False) and builds image paths as `root/<images_dir>/<list entry without its leading
/>`. Its download extracts the archives into root; the train tars hold `data_large/` (or `data_256/`),
which it renames to `data_large_standard` (`data_256_standard`) after extracting: an archive
extracted by hand leaves `data_large`, which Places365 does not read. The val tars hold `val_large/`
(`val_256/`), read as they are.
"""

from __future__ import annotations

# the archives of Places365-Standard, with the md5s torchvision knows (Places365._DEVKIT_META, _IMAGES_META)
FILELIST_ARCHIVE = ("filelist_places365-standard.tar", "35a0585fee1fa656440f3ab298f8479c")
TRAIN_ARCHIVE = ("train_large_places365standard.tar", "67e186b496a84c929568076ed01a8aa1")
VAL_ARCHIVE = ("val_large.tar", "9b71c4993ad89d2d8bcbdc4aef38042f")
TRAIN_SMALL_ARCHIVE = ("train_256_places365standard.tar", "53ca1c756c3d1e7809517cc47c5561c5")
VAL_SMALL_ARCHIVE = ("val_256.tar", "e27b17d8d44f4af9a78502beb927f808")

# the files of the file-list archive, at its top level, copied to root/ (Places365._CATEGORIES_META,
# _FILE_LIST_META); the real archive holds places365_test.txt as well, which no split here reads
CATEGORIES = ("categories_places365.txt", "06c963b85866bd0649f97cb43dd16673")
TRAIN_LIST = ("places365_train_standard.txt", "30f37515461640559006b8329efbed1a")
VAL_LIST = ("places365_val.txt", "e9f2fd57bfd9d07630173f4e8708e4b1")

# the top folder inside each image archive, and the folder of root that Places365.images_dir reads
TRAIN_TOP, TRAIN_IMAGES_DIR = "data_large", "data_large_standard"
VAL_TOP, VAL_IMAGES_DIR = "val_large", "val_large"
TRAIN_SMALL_TOP, TRAIN_SMALL_IMAGES_DIR = "data_256", "data_256_standard"
VAL_SMALL_TOP, VAL_SMALL_IMAGES_DIR = "val_256", "val_256"

# the counts of the real release
CLASSES = 365
TRAIN_IMAGES = 1_803_460
VAL_IMAGES = 36_500

# archive sizes in bytes, where a published mirror records them with the md5 above (git-annex keys of
# datasets-mila/datasets--places365); the large train tar's is not recorded there
ARCHIVE_BYTES = {
    FILELIST_ARCHIVE[0]: 67_498_496,
    VAL_ARCHIVE[0]: 2_270_320_640,
    TRAIN_SMALL_ARCHIVE[0]: 26_103_685_120,
    VAL_SMALL_ARCHIVE[0]: 525_158_400,
}
# the label files: LF line ends, no newline after the last line (the categories file's 6,833 bytes
# reproduce its md5 only so)
LIST_BYTES = {CATEGORIES[0]: 6_833, TRAIN_LIST[0]: 57_169_223, VAL_LIST[0]: 1_120_499}
