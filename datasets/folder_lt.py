"""``folder_lt``: a user's own long-tailed image dataset, as ``relpath label`` split files + an image root.

Put ``train.txt``, ``test.txt`` and optionally ``val.txt`` (names configurable) in the root or in
``data.split_dir``, one ``relative/path/to/image.jpg <class index>`` per line. The number of classes
is ``data.num_classes``, or the largest training label + 1 (a val or test label beyond it is an
error, as is a class without training images). ``data.val_file`` names a validation file that must
exist; left empty, ``val.txt`` is used when present, else the validation split is drawn from the
training images as for iNaturalist (``val_per_class``, ``val_held_out``). The working image size is
the shorter side of the first training image unless ``data.image_size`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ltbench.config import limits
from ltbench.filelists import FileList, FileListDataset, FileListParams
from ltbench.registry import register_dataset


@dataclass
class FolderLTParams(FileListParams):
    image_size: int = field(default=0, metadata=limits(0))  # 0 = the shorter side of the first training image
    train_file: str = "train.txt"
    val_file: str = ""  # "" = val.txt if present; a named file must exist
    test_file: str = "test.txt"
    num_classes: int = field(default=0, metadata=limits(0))  # 0 = largest label in the split files + 1


@register_dataset("folder_lt")
class FolderLT(FileListDataset):
    """Your own long-tailed data: relpath-label split files (train/val/test.txt) under --root."""

    Params = FolderLTParams
    title = "folder_lt"

    def split_names(self, params: FolderLTParams) -> dict[str, tuple[str, ...]]:
        return {"train": (params.train_file,), "val": (params.val_file or "val.txt",), "test": (params.test_file,)}

    def optional_splits(self, params: FolderLTParams) -> set[str]:
        return set() if params.val_file else {"val"}

    def class_count(self, params: FolderLTParams, lists: Sequence[FileList]) -> int:
        return params.num_classes or int(lists[0].labels.max()) + 1  # lists[0]: the training list

    def manual_steps(self, params: FolderLTParams) -> str:
        root = params.root or "DIR"
        return (
            f"folder_lt reads your own images: write {params.train_file}, {params.test_file} and optionally "
            f"{params.val_file or 'val.txt'} in {params.split_dir or root}, "
            "one `relative/path.jpg <class index>` per line, "
            f"with the images under {root} (--root {root}).\n"
            f"Then check with: ltbench data verify --dataset folder_lt --root {root}"
        )
