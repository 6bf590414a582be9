"""Reconstruct a dataset (placeholder until the distributed job lands).

For now this only loads a StyleGAN2 checkpoint and writes one sample image, to
show the install works; the Ray job replaces it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from recon.stylegan2 import load_stylegan2

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=str(REPO.parent / "shared/fixtures/stylegan2/tiny.pt"))
    p.add_argument("--output", default="demo_output/sample.png")
    args = p.parse_args(argv)
    print("The distributed reconstruction job is not built yet; this only samples the StyleGAN2 checkpoint.")
    model = load_stylegan2(args.checkpoint)
    with torch.no_grad():
        img, _ = model.generator([torch.randn(1, model.config.style_dim)], randomize_noise=False)
    arr = ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(args.output)
    print(f"wrote {args.output} ({model.config})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
