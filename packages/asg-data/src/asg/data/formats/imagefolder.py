"""Class-per-subdirectory image trees (``root/<class>/<image>``), as used for ImageNet-style data.

Images are decoded lazily, when an item is read, with Pillow (install ``asg-data[images]``).
Items are ``(image, label)`` with ``image`` a uint8 array (H, W, C) (or (H, W) in mode "L").

>>> ImageFolder.__name__
'ImageFolder'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError, DatasetNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_PILLOW_MISSING = (
    "ImageFolder decodes images with Pillow, which is not installed: pip install 'asg-data[images]' "
    "(or pip install Pillow), or pass image_loader= to decode files yourself"
)


def _pillow_image_module() -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(_PILLOW_MISSING) from error
    return Image


class ImageFolder:
    """Images under ``root/<class_name>/...``; classes are the sorted subdirectory names.

    Args:
        root: the directory holding one subdirectory per class (nested folders inside a class count).
        mode: Pillow mode to convert to ("RGB", "L", ...), or None to keep each file's own mode.
        size: (height, width) to resize every image to (bilinear), so that batches can be stacked.
        transform / target_transform: applied to the image array / the integer label.
        extensions: file suffixes that count as images (case-insensitive).
        image_loader: ``path -> array`` to decode without Pillow.

    Attributes: ``classes`` (names), ``class_to_index``, ``samples`` (list of (path, label)).

    Raises `DatasetNotFoundError` (naming the folder) when the root has no class folders or a class
    folder holds no image, and `DataFormatError` (naming the file) when an image cannot be decoded or
    is over Pillow's decompression-bomb limit.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        mode: str | None = "RGB",
        size: tuple[int, int] | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        image_loader: Callable[[Path], np.ndarray] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"ImageFolder root {self.root.resolve()} is not a directory")
        if image_loader is None:
            _pillow_image_module()
        self.mode, self.size = mode, size
        self.transform, self.target_transform = transform, target_transform
        self.image_loader = image_loader
        suffixes = tuple(e.lower() for e in extensions)
        self.classes = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not self.classes:
            raise DatasetNotFoundError(f"ImageFolder: no class subdirectories in {self.root.resolve()}")
        self.class_to_index = {name: k for k, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        empty: list[str] = []
        for name in self.classes:
            files = sorted(
                p
                for p in (self.root / name).rglob("*")
                if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
            )
            if not files:
                empty.append(name)
            self.samples.extend((p, self.class_to_index[name]) for p in files)
        if empty:
            # As torchvision's ImageFolder: a class with no images is almost always a mistake (a failed
            # copy, a wrong extension) and would silently shift what the labels mean.
            folders = ", ".join(str((self.root / name).resolve()) for name in empty)
            raise DatasetNotFoundError(
                f"ImageFolder: class folder{'s' if len(empty) > 1 else ''} {folders} "
                f"hold{'' if len(empty) > 1 else 's'} no image files ({', '.join(suffixes)}); every "
                f"subdirectory of {self.root.resolve()} is a class and needs at least one image: add images, "
                f"remove the folder, or pass extensions= for other file types"
            )
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, path: Path) -> np.ndarray:
        """Decode one file to a uint8 array (converted to ``mode`` and resized to ``size`` if set)."""
        if self.image_loader is not None:
            return np.asarray(self.image_loader(path))
        image_module = _pillow_image_module()
        try:
            with image_module.open(path) as image:
                if self.mode is not None and image.mode != self.mode:
                    image = image.convert(self.mode)
                if self.size is not None:
                    height, width = self.size
                    image = image.resize((width, height), image_module.Resampling.BILINEAR)
                return np.asarray(image)
        except image_module.DecompressionBombError as error:
            raise DataFormatError(
                f"{path}: refused to decode the image: {error} If the file is trusted, raise the limit "
                f"with PIL.Image.MAX_IMAGE_PIXELS (now {image_module.MAX_IMAGE_PIXELS}), or pass "
                f"image_loader= to decode it yourself"
            ) from error
        except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for unreadable files
            raise DataFormatError(f"{path}: cannot decode image ({error})") from error

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"ImageFolder index {index} is out of range for length {len(self)}")
        path, label = self.samples[index]
        image: Any = self.load_image(path)
        if self.transform is not None:
            image = self.transform(image)
        target: Any = self.target_transform(label) if self.target_transform is not None else np.int64(label)
        return image, target

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, images={len(self)}, classes={len(self.classes)})"
