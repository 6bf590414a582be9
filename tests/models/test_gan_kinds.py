"""Checkpoint kinds (recon.models.gan): registered builders, and the synthetic instrument via its entry point."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from bundles import TINY_STYLE_DIM, tiny_stylegan2

from recon.models import gan as gan_module
from recon.stylegan2 import save_stylegan2

REPO = Path(__file__).resolve().parents[2]


class _Marked(torch.nn.Module):
    def __init__(self, payload: dict, source: str):
        super().__init__()
        self.payload, self.source = payload, source


def test_a_registered_kind_builds_checkpoints_that_hold_its_key(tmp_path, monkeypatch):
    monkeypatch.setattr(gan_module, "_REGISTERED", {})
    path = tmp_path / "custom.pt"
    torch.save({"my_kind": {"width": 3}}, path)
    gan_module.register_gan_kind("my_kind", lambda ckpt, source: _Marked(ckpt["my_kind"], source))
    loaded = gan_module.load_gan(str(path))
    assert isinstance(loaded, _Marked)
    assert loaded.payload == {"width": 3} and loaded.source == str(path)


def test_a_builder_that_fails_on_a_malformed_checkpoint_names_the_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(gan_module, "_REGISTERED", {})
    path = tmp_path / "broken.pt"
    torch.save({"my_kind": {}}, path)
    gan_module.register_gan_kind("my_kind", lambda ckpt, source: _Marked(ckpt["my_kind"]["missing"], source))
    from recon.stylegan2 import CheckpointError

    with pytest.raises(CheckpointError, match="malformed 'my_kind' checkpoint"):
        gan_module.load_gan(str(path))


def test_stylegan2_loading_never_imports_the_synthetic_instrument(tmp_path):
    g = tiny_stylegan2()
    path = tmp_path / "g.pt"
    save_stylegan2(g, path)
    code = textwrap.dedent(f"""
        import sys
        from recon.models.gan import load_gan
        gan = load_gan({str(path)!r})
        assert gan.config.style_dim == {TINY_STYLE_DIM}, gan.config
        loaded = sorted(m for m in sys.modules if m.startswith("recon.synthetic"))
        assert not loaded, loaded
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_synthetic_checkpoints_load_through_the_entry_point(tmp_path):
    """The installed package's entry point, not an import in the loader, brings the synthetic kind."""
    from recon.synthetic.generator import build_synthetic_gan, save_synthetic_gan

    path = tmp_path / "synthetic.pt"
    save_synthetic_gan(build_synthetic_gan(n_stats=64), path)
    code = textwrap.dedent(f"""
        import sys
        from recon.models import gan
        assert not gan._REGISTERED
        assert not [m for m in sys.modules if m.startswith("recon.synthetic")]
        model = gan.load_gan({str(path)!r})
        print(type(model).__module__, type(model).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["recon.synthetic.generator", "SyntheticGAN"], (
        f"{out.stdout!r}: is recon installed (pip install -e .)? the entry point registers the synthetic kind")
