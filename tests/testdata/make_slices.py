"""Writes the small real data slices the tests read, from the full offline copies.

    python tests/testdata/make_slices.py DATA_DIR

``DATA_DIR`` holds ``cifar10/{train,test}-jpeg.npz`` and ``imagenette/{train,val,
imagenet-sample}-jpeg.npz`` (the offline copies ``regnet_jax.import_data`` imports; format in
its docstring). Writes the same files, with fewer examples, beside this script: CIFAR-10 512
train and 200 test images and Imagenette 40 train and 20 validation photos, each evenly spaced
over the file (its classes are grouped, so every class is in), and from the 209 varied-size
ImageNet photos every greyscale one plus the first RGB ones under 60 kB (varied sizes, from
86x108 to 640x427 pixels). The selection is deterministic: rerunning it writes the same bytes.
"""

from __future__ import annotations

import io
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).parent
EVENLY = {"cifar10": {"train": 512, "test": 200}, "imagenette": {"train": 40, "val": 20}}
SAMPLE_RGB = 30  # RGB photos of the ImageNet sample kept, besides every greyscale one
SAMPLE_MAX_BYTES = 60_000


def _write(src: pathlib.Path, dst: pathlib.Path, idx: list[int]) -> None:
  """Writes examples ``idx`` of the offline .npz ``src`` to ``dst`` in the same format."""
  with np.load(src) as d:
    arrays = dict(d)
  jpeg, offsets = arrays.pop("jpeg"), arrays.pop("offsets")
  parts = [jpeg[offsets[i]:offsets[i + 1]] for i in idx]
  arrays["labels"] = arrays["labels"][idx]
  dst.parent.mkdir(parents=True, exist_ok=True)
  np.savez(dst, jpeg=np.concatenate(parts),
           offsets=np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64),
           **arrays)


def _sample_indices(src: pathlib.Path) -> list[int]:
  """Every greyscale photo of the ImageNet sample, and the first RGB ones under the size cap."""
  from PIL import Image

  with np.load(src) as d:
    jpeg, offsets = d["jpeg"], d["offsets"]
  grey, rgb = [], []
  for i in range(len(offsets) - 1):
    raw = jpeg[offsets[i]:offsets[i + 1]].tobytes()
    if Image.open(io.BytesIO(raw)).mode != "RGB":
      grey.append(i)
    elif len(raw) < SAMPLE_MAX_BYTES:
      rgb.append(i)
  return sorted(grey + rgb[:SAMPLE_RGB])


def main(source: str) -> None:
  root = pathlib.Path(source)
  for dataset, splits in EVENLY.items():
    for split, count in splits.items():
      src = root / dataset / f"{split}-jpeg.npz"
      with np.load(src) as d:
        n = len(d["labels"])
      _write(src, HERE / dataset / src.name, np.linspace(0, n - 1, count).astype(int).tolist())
  src = root / "imagenette" / "imagenet-sample-jpeg.npz"
  _write(src, HERE / "imagenette" / src.name, _sample_indices(src))
  for path in sorted(HERE.glob("*/*.npz")):
    print(f"{path.relative_to(HERE)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__.splitlines()[2].strip())
  main(sys.argv[1])
