"""iNaturalist 2018 (Van Horn et al.): 8,142 species, 437,513 training images, imbalance 500.

Two index forms give the same class indices (the raw ``category_id``):

- ``iNaturalist18_{train,val}.txt``, ``relpath label`` lists (RIDE, MDCS, SADE, DeiT-LT);
- the official ``train2018.json`` / ``val2018.json`` (COCO-style ``images`` / ``annotations``).

``data.format=auto`` takes the text lists when present, else the json indexes. As in every paper,
the official val set (24,426 images, 3 per class) is the **test** split. iNaturalist has no other
labelled images, so the validation split is drawn from the training images: ``val_per_class``
(default 3) per class with ``data.seed``, left in the training set so that training matches the
papers (monitoring only: selection on it is selection on training images); ``val_held_out=true``
removes them from training (each class keeps at least one image), which changes the training set
and its fingerprint. ``reindex`` renumbers classes by descending count as DeiT-LT does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ltbench.data import PublishedStats, RemoteFile
from ltbench.filelists import FileList, FileListDataset, FileListParams, read_inat_json, read_list
from ltbench.registry import register_dataset

DEIT_LT = "https://raw.githubusercontent.com/val-iisc/DeiT-LT/bc369700932a950fa8535df80b37f973ac7aae11/data_txt/"
TEXT_NAMES = {"train": ("iNaturalist18_train.txt",), "test": ("iNaturalist18_val.txt",)}
JSON_NAMES = {"train": ("train2018.json",), "test": ("val2018.json",)}


@dataclass
class INat2018Params(FileListParams):
    format: str = field(default="auto", metadata={"choices": ("auto", "txt", "json")})


@register_dataset("inat2018")
class INat2018(FileListDataset):
    """iNaturalist 2018 (8,142 classes, 437,513 training images, IF 500); val2018 is the test split."""

    Params = INat2018Params
    title = "iNaturalist 2018"
    num_classes = 8142
    index_cuts = (842, 4543)  # DeiT-LT --categories
    published_stats = PublishedStats(classes=8142, train=437513, max=1000, min=2, test=24426)

    def split_names(self, params: INat2018Params) -> dict[str, tuple[str, ...]]:
        if params.format == "txt":
            return TEXT_NAMES
        if params.format == "json":
            return JSON_NAMES
        return {split: TEXT_NAMES[split] + JSON_NAMES[split] for split in TEXT_NAMES}

    def read_split(self, path: Path) -> FileList:
        return read_inat_json(path) if path.name.endswith((".json", ".json.gz")) else read_list(path)

    def downloads(self, params: INat2018Params) -> list[RemoteFile]:
        return [
            RemoteFile(
                DEIT_LT + "iNaturalist18_train.txt",
                "iNaturalist18_train.txt",
                "gitblob:4accdb7584d2f0a5106c40a33ed6afa392189bcc",
            ),
            RemoteFile(
                DEIT_LT + "iNaturalist18_val.txt",
                "iNaturalist18_val.txt",
                "gitblob:4c23900857fd0f5adcd4cc0dffef345039eeb05f",
            ),
        ]

    def manual_steps(self, params: INat2018Params) -> str:
        return self.image_instructions(
            params,
            (
                "iNaturalist 2018's images are distributed by the iNat competition under the terms at "
                "https://github.com/visipedia/inat_comp/tree/master/2018.\n"
                "Obtain https://ml-inat-competition-datasets.s3.amazonaws.com/2018/train_val2018.tar.gz (120 GB, "
                "unpacks to train_val2018/). For the official json indexes instead of the text lists, also "
                "train2018.json.tar.gz and val2018.json.tar.gz from the same location, unpacked next to the "
                "images (--set data.format=json)."
            ),
        )
