"""ImageNet-LT and Places-LT (Liu et al., OLTR 2019): ``relpath label`` split files plus an image root.

Both come as three lists, ``<Name>_{train,val,test}.txt``, read as RIDE, MDCS, SADE and DeiT-LT
read them (one ``path label`` per line, paths relative to the image root). Class indices are the
files' labels unless ``data.reindex`` renumbers them by descending training count (DeiT-LT on
ImageNet-LT, MDCS on Places-LT). The val split is the ``_val.txt`` file (20 images per class taken
from outside the training lists; without it, as with DeiT-LT's copies, it is drawn from the training
images as for iNaturalist); the test split is ``_test.txt``. Images are decoded with PIL in
DataLoader workers, with RandomResizedCrop + flip for training and Resize + CenterCrop for evaluation.

``ltbench data prepare`` fetches the split files from SADE's repository at a pinned commit (MDCS
ships byte-identical copies; its Places-LT files are those in ``../shared/data/splits``) and checks
their git blob ids; the images are licensed and must be obtained by the user.
"""

from __future__ import annotations

from ltbench.data import PublishedStats, RemoteFile
from ltbench.filelists import FileListDataset, FileListParams
from ltbench.registry import register_dataset

SADE = "https://raw.githubusercontent.com/Vanint/SADE-AgnosticLT/cba11b8b0fb91711eeffd5e45311f321f8a88680/data_txt/"


def _lists(prefix: str, blobs: dict[str, str], folder: str) -> list[RemoteFile]:
    return [
        RemoteFile(f"{SADE}{folder}/{prefix}_{split}.txt", f"{prefix}_{split}.txt", f"gitblob:{blob}")
        for split, blob in blobs.items()
    ]


@register_dataset("imagenet_lt")
class ImageNetLT(FileListDataset):
    """ImageNet-LT (1000 classes, 115,846 training images, IF 256): split files + ILSVRC-2012 images."""

    title = "ImageNet-LT"
    num_classes = 1000
    index_cuts = (390, 835)  # DeiT-LT --categories
    published_stats = PublishedStats(classes=1000, train=115846, max=1280, min=5, val=20000, test=50000)

    def split_names(self, params: FileListParams) -> dict[str, tuple[str, ...]]:
        # DeiT-LT spells its copies Imagenet_LT_*.txt
        return {s: (f"ImageNet_LT_{s}.txt", f"Imagenet_LT_{s}.txt") for s in ("train", "val", "test")}

    def downloads(self, params: FileListParams) -> list[RemoteFile]:
        return _lists(
            "ImageNet_LT",
            {
                "train": "a063f095fcd475db4cf8b0658c4b73955535bbf9",
                "val": "3ed3188b2f44829ce2dec1cc27040d8d40984088",
                "test": "76a2fb9749d6cd29e765cc4f8c270f2504131e2f",
            },
            "ImageNet_LT",
        )

    def manual_steps(self, params: FileListParams) -> str:
        return self.image_instructions(
            params,
            (
                "ImageNet-LT's images are part of ILSVRC-2012 (ImageNet-1k), available after registering at "
                "https://image-net.org/download-images under its terms of access (non-commercial research).\n"
                "Obtain ILSVRC2012_img_train.tar (138 GB, one tar per class inside: unpack each into train/<wnid>/) "
                "and ILSVRC2012_img_val.tar (6.3 GB; the split files from `data prepare` expect the validation "
                "images sorted into val/<wnid>/ class folders)."
            ),
        )


@register_dataset("places_lt")
class PlacesLT(FileListDataset):
    """Places-LT (365 classes, 62,500 training images, IF 996): split files + Places365-Standard images."""

    title = "Places-LT"
    num_classes = 365
    published_stats = PublishedStats(classes=365, train=62500, max=4980, min=5, val=7300, test=36500)

    def split_names(self, params: FileListParams) -> dict[str, tuple[str, ...]]:
        return {s: (f"Places_LT_{s}.txt",) for s in ("train", "val", "test")}

    def downloads(self, params: FileListParams) -> list[RemoteFile]:
        return _lists(
            "Places_LT",
            {
                "train": "1d608b558c25c271da75c06f1e5e3625a4ebcb79",
                "val": "89c29c0973328f77d7a77a8b580634ce20acdc11",
                "test": "d43400ac9bc2275baa058456da40b20abb50b108",
            },
            "Places_LT_v2",
        )

    def manual_steps(self, params: FileListParams) -> str:
        return self.image_instructions(
            params,
            (
                "Places-LT's images are Places365-Standard's small (256x256) images, for non-commercial research "
                "and education under the terms at http://places2.csail.mit.edu/download.html.\n"
                "Obtain http://data.csail.mit.edu/places/places365/train_256_places365standard.tar (24 GB, unpacks "
                "to data_256/) and http://data.csail.mit.edu/places/places365/val_256.tar (501 MB, unpacks to "
                "val_256/, which holds Places-LT's test images)."
            ),
        )
