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
        for name in self.classes:
            files = sorted(
                p
                for p in (self.root / name).rglob("*")
                if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
            )
            self.samples.extend((p, self.class_to_index[name]) for p in files)
        if not self.samples:
            raise DatasetNotFoundError(
                f"ImageFolder: no image files ({', '.join(suffixes)}) under the class folders of "
                f"{self.root.resolve()}"
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
