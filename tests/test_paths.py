"""Atomic writes and locating the shared assets."""

import pytest

from rmt_deploy.errors import AssetsError, OutputError
from rmt_deploy.paths import assets_dir, ensure_output_dir, write_text_atomic, write_with_atomic


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"

    def half_then_fail(tmp):
        tmp.write_text('{"half": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_with_atomic(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_replace_is_whole(tmp_path):
    target = write_text_atomic(tmp_path / "a.md", "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_output_dir_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write to output directory"):
        ensure_output_dir(blocker / "sub")
    assert ensure_output_dir(tmp_path / "a" / "b").is_dir()


def test_assets_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RMT_DEPLOY_ASSETS", str(tmp_path))
    assert assets_dir() == tmp_path.resolve()
    monkeypatch.setenv("RMT_DEPLOY_ASSETS", str(tmp_path / "missing"))
    with pytest.raises(AssetsError, match="RMT_DEPLOY_ASSETS"):
        assets_dir()
