"""Real photographs for vision models: ``builtin:photos`` (calibration) and ``builtin:photos-test``
(held out).

The photographs are those that installed packages ship: scikit-image's sample photos (PyPI package
``scikit-image``, read as files, never imported) and the nature photographs of Debian's
``mate-backgrounds`` (``/usr/share/backgrounds/mate/nature``) where it is installed. Graphics, renders,
charts and synthetic images among those files are left out by name (:data:`SKIMAGE_PHOTOS`).

The split is by photograph, never by crop: every fourth photograph of the fixed order (sources in the
order above, file names sorted) is a calibration photograph, the others are held out, so no crop of a
held-out photograph is ever seen by calibration. Each photograph gives :data:`CROPS` square crops
(the whole short side at the centre, then 2x2 and 3x3 grids at 0.7 and 0.5 of it), resized to the
model's input and normalised like any image folder. No labels: these are for fidelity against FP32
(top-1 agreement, cosine), not accuracy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from toolchain.core.errors import ToolchainError, one_line
from toolchain.core.onnxfile import ModelInput
from toolchain.data.dataset import DataOptions, Dataset
from toolchain.data.readers import image_input, normalisation

# scikit-image's sample files that are photographs (not renders, charts, logos or phantoms); one of the
# two near-identical motorcycle stereo views
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                  "retina.jpg", "rocket.jpg")
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
# (fraction of the short side, grid points per axis)
SCALES = ((1.0, 1), (0.7, 2), (0.5, 3))
CROPS = sum(n * n for _, n in SCALES)
CALIBRATION_EVERY = 4


def photo_files() -> list[Path]:
    """Every photograph available on this machine, in the fixed order the split uses."""
    files: list[Path] = []
    try:
        spec = importlib.util.find_spec("skimage")  # located, never imported
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        files += [data / name for name in SKIMAGE_PHOTOS if (data / name).is_file()]
    if MATE_NATURE.is_dir():
        files += sorted(p for p in MATE_NATURE.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files


def split_files(split: str) -> list[Path]:
    """The photographs of ``split`` (``calibration`` or ``test``)."""
    files = photo_files()
    pick = (lambda i: i % CALIBRATION_EVERY == 0) if split == "calibration" else (lambda i: i % CALIBRATION_EVERY != 0)
    return [f for i, f in enumerate(files) if pick(i)]


def crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The :data:`CROPS` square boxes ``(left, top, right, bottom)`` of a ``width`` x ``height`` photo."""
    short = min(width, height)
    boxes = []
    for fraction, n in SCALES:
        side = max(1, int(round(short * fraction)))
        # the centre for one point; else a grid over the whole photo, corners included
        xs = np.linspace(0, width - side, n) if n > 1 else [(width - side) / 2]
        ys = np.linspace(0, height - side, n) if n > 1 else [(height - side) / 2]
        boxes += [(int(x), int(y), int(x) + side, int(y) + side) for y in ys for x in xs]
    return boxes


def read_photos(inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions, split: str) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    source = "builtin:photos" + ("-test" if split == "test" else "")
    files = split_files(split)
    if not files:
        raise ToolchainError(f"{source} needs real photographs: the package scikit-image (its sample photos) "
                             f"or Debian's mate-backgrounds",
                             hint="pip install --no-deps scikit-image, or `make install`")
    inp = image_input(inputs, source)
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    size = opts.image_size or tuple(d if isinstance(d, int) else 224 for d in inp.shape[2:4])
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img.draft("RGB", (4 * size[1], 4 * size[0]))  # JPEG: decode at a reduced size, much faster
                img = img.convert("L" if channels == 1 else "RGB")
                for box in crop_boxes(*img.size):
                    crop = img.crop(box).resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(crop, dtype=np.float32) / 255.0
                    arrays.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ToolchainError(f"{f}: not a readable image ({one_line(exc)})") from None
        if opts.samples is not None and len(arrays) >= opts.samples:
            break
    x = np.stack(arrays)
    mean, std = normalisation(meta, opts, channels)
    return Dataset(source, {inp.name: ((x - mean) / std).astype(np.float32)})
