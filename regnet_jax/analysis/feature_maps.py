"""Fig. 1(a): the feature maps I (block input), H (regulator state) and O (block output) of
consecutive blocks, for test images, saved as a PNG per image.

    python -m regnet_jax.analysis.feature_maps --workdir DIR --out DIR [--stage 1] [--images 2]

Row k shows block k of the stage: the input image, then I = the previous block's output, H and
O, each the mean over channels of the (post-ReLU) map, on its own colour scale. The stage's
first block has no I column (its input comes from outside the stage). Plain ResNets have no H.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from regnet_jax import console

# JAX, flax and the data pipeline are imported where they are used: --help needs none of them.
from regnet_jax.analysis.block_probe import block_outputs


def stage_maps(model, variables, images: np.ndarray, stage: int) -> dict[str, list[np.ndarray]]:
  """Channel-mean maps of one stage: ``{'I', 'H', 'O'}`` -> per block a ``[B, H, W]`` array
  (``I``: the block's input, the stage's input or the previous block's output; ``H`` is empty
  for unregulated stages)."""
  import jax

  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(
      variables, images)
  inter = state["intermediates"]
  mean = lambda t: np.asarray(t, np.float32).mean(-1)
  outs = [mean(o) for o in block_outputs(inter, "features", (stage,))]
  hidden = [mean(h) for h in block_outputs(inter, "hidden", (stage,))]
  stage_input = mean(inter[f"stage{stage}"]["input"][0])
  return {"I": [stage_input, *outs[:-1]], "H": hidden, "O": outs}


def plot(image: np.ndarray, maps: dict[str, list[np.ndarray]], index: int, title: str,
         path: str) -> None:
  """Writes one image's grid (rows: blocks; columns: image, I, H, O) to ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = ["image", "I", *(["H"] if maps["H"] else []), "O"]
  rows = len(maps["O"])
  fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows),
                           squeeze=False)
  for r in range(rows):
    for c, name in enumerate(columns):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if name == "image":
        ax.imshow(image)
      else:
        ax.imshow(maps[name][r][index], cmap="viridis")
      if r == 0:
        ax.set_title(name)
      if c == 0:
        ax.set_ylabel(f"block {r + 1}")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_feature_maps(workdir: str, out_dir: str, stage: int = 1, num_images: int = 2,
                      step: int | None = None) -> list[str]:
  """Writes ``{model}_stage{stage}_image{i}.png`` for the first ``num_images`` test images;
  returns the paths."""
  import jax

  from regnet_jax import data
  from regnet_jax.train import evaluate
  from regnet_jax.train.mesh import DataParallel

  dp = DataParallel(jax.devices()[:1])
  run = evaluate.restore(workdir, step, dp)
  model, variables, config = run.model, run.variables, run.config
  if not 1 <= stage <= len(model.stage_sizes):
    raise ValueError(f"--stage={stage} must be between 1 and {len(model.stage_sizes)}")
  spec = data.get_spec(config)
  batch = next(evaluate.eval_source(config, dp, max(num_images, 1)).eval_batches())
  pixels = np.clip(np.asarray(batch["image"])[:num_images], 0, 255).astype(np.uint8)
  maps = stage_maps(model, variables, data.normalize(pixels, spec), stage)
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i in range(len(pixels)):
    path = os.path.join(out_dir, f"{config.model}_stage{stage}_image{i}.png")
    plot(pixels[i], maps, i, f"{config.model}, stage {stage}, test image {i}", path)
    paths.append(path)
  return paths


def main(argv: list[str] | None = None) -> None:
  console.quiet()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="folder for the PNG files")
  parser.add_argument("--stage", type=int, default=1)
  parser.add_argument("--images", type=int, default=2)
  args = parser.parse_args(argv)
  from regnet_jax.data import pipeline  # after the flags: --help needs no TensorFlow

  try:
    for path in save_feature_maps(args.workdir, args.out, args.stage, args.images):
      print(path)
  except (ValueError, FileNotFoundError, pipeline.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main()
