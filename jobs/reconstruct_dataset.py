"""Reconstruct a dataset: 3D annotations for every image, on Ray.

    ray job submit -- python jobs/reconstruct_dataset.py --input s3://bucket/images/ \
        --output s3://bucket/recon/ --bundle s3://bucket/models/celeba.yaml --preset celeba

Without a cluster the same command starts a local Ray; with no arguments it
runs the embedded demo. All logic lives in ``cluster/`` (see cluster/cli.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

# Make `cluster` and `recon` importable when run from a checkout without `pip install -e .`.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from cluster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
