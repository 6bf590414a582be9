"""--version, --list-presets, --help and "did you mean" for a misspelt preset (issue 20 item 5)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

import recon
import recon.version as version
from cluster.cli import build_parser, main
from recon.method.config import ConfigError, available_presets, load_config


def test_version_flag_prints_the_code_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out.split()
    assert printed == ["reconstruct_dataset.py", recon.__version__]
    assert recon.__version__.startswith(version.release_version())


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_version_follows_the_commit_and_uncommitted_edits(tmp_path, monkeypatch):
    """The label is the checkout's commit, marked dirty while tracked files differ from it."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    monkeypatch.setattr(version, "_PACKAGE_ROOT", tmp_path)
    first = version._git_label()
    assert first and first.startswith("g") and not first.endswith(".dirty")
    (tmp_path / "a.py").write_text("x = 2\n")
    assert version._git_label() == first + ".dirty"
    _git(tmp_path, "commit", "-q", "-am", "two")
    second = version._git_label()
    assert second != first and not second.endswith(".dirty")
    monkeypatch.setattr(version, "_PACKAGE_ROOT", tmp_path / "no-checkout")
    assert version._git_label() is None  # an installed package reports the release alone


def test_list_presets_needs_no_other_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--list-presets"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == available_presets()
    assert any(line.startswith("car ") and "masks" in line for line in lines)


def test_help_shows_defaults_presets_and_text_for_every_flag():
    parser = build_parser()
    text = parser.format_help()
    for name in available_presets():
        assert name in text
    assert "(default: image_id)" in text and "(default: 256)" in text and "(default: 127.0.0.1)" in text
    undocumented = [a.option_strings for a in parser._actions if a.help is None]
    assert undocumented == []


def test_misspelt_preset_suggests_the_name(capsys):
    with pytest.raises(ConfigError, match=r"unknown preset 'celeb'; did you mean 'celeba'"):
        load_config("celeb")
    with pytest.raises(ConfigError, match=r"unknown preset 'zebra'; available"):  # nothing close: no guess
        load_config("zebra")
