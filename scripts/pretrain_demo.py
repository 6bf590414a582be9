"""Rebuild the embedded demo's start weights, recon/synthetic/demo_pretrained.pth.

Joint pre-training (preset demo_pretrain) of the demo's narrow networks on training samples of the
synthetic family, with fixed seeds and 2 torch threads: on the same machine and torch version it
writes the same bytes. About 30-45 minutes on a 2-core CPU (README.md, docs/quality.md).

    python scripts/pretrain_demo.py                       # overwrite the shipped file
    python scripts/pretrain_demo.py --output /tmp/w.pth   # write elsewhere, e.g. to compare bytes
    python scripts/pretrain_demo.py --fast 0.05 --output /tmp/a.pth   # a short run (determinism check)
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path

from recon.synthetic.demo_weights import DEMO_WEIGHTS, TRAIN_FAST, TRAIN_SAMPLES, pretrain_demo_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=DEMO_WEIGHTS)
    p.add_argument("--samples", type=int, default=TRAIN_SAMPLES, help="training samples (default %(default)s)")
    p.add_argument("--fast", type=float, default=TRAIN_FAST, help="schedule scale (default %(default)s, the shipped file's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    out = pretrain_demo_weights(args.output, n_samples=args.samples, fast=args.fast)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest}) in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
