"""``folder_lt``: a user's own long-tailed image dataset, as ``relpath label`` split files + an image root.

Put ``train.txt``, ``test.txt`` and optionally ``val.txt`` (names configurable) in the root or in
``data.split_dir``, one ``relative/path/to/image.jpg <class index>`` per line. The number of classes
is ``data.num_classes``, or the largest label + 1. Without ``val.txt`` the validation split is
drawn from the training images as for iNaturalist (``val_per_class``, ``val_held_out``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ltbench.config import limits
from ltbench.errors import DataError
from ltbench.filelists import FileList, FileListDataset, FileListParams
from ltbench.registry import register_dataset


@dataclass
class FolderLTParams(FileListParams):
    train_file: str = "train.txt"
    val_file: str = "val.txt"  # optional
    test_file: str = "test.txt"
    num_classes: int = field(default=0, metadata=limits(0))  # 0 = largest label in the split files + 1


@register_dataset("folder_lt")
class FolderLT(FileListDataset):
    """Your own long-tailed data: relpath-label split files (train/val/test.txt) under --root."""

    Params = FolderLTParams
    title = "folder_lt"

    def split_names(self, params: FolderLTParams) -> dict[str, tuple[str, ...]]:
        return {"train": (params.train_file,), "val": (params.val_file,), "test": (params.test_file,)}

    def class_count(self, params: FolderLTParams, lists: Sequence[FileList]) -> int:
        if params.num_classes < 0:
            raise DataError(f"data.num_classes must be >= 0 (0 = from the labels), got {params.num_classes}")
        return params.num_classes or max(int(lst.labels.max()) for lst in lists) + 1

    def manual_steps(self, params: FolderLTParams) -> str:
        root = params.root or "DIR"
        return (
            f"folder_lt reads your own images: write {params.train_file}, {params.test_file} and optionally "
            f"{params.val_file} in {params.split_dir or root}, one `relative/path.jpg <class index>` per line, "
            f"with the images under {root} (--root {root}).\n"
            f"Then check with: ltbench data verify --dataset folder_lt --root {root}"
        )
