"""Atomic writes: nothing half-written, ordinary permissions, clear JSON errors."""

import json
import os
import stat

import pytest

from utils.io_utils import DataFormatError, atomic_write, read_json, read_jsonl, write_json, write_jsonl


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"f1": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write('{"f1": 0.9')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"f1": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_written_files_get_umask_permissions_not_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) == 0o644


def test_bad_json_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.json").write_text("{\n  'x': 1}")
    with pytest.raises(DataFormatError, match=r"bad\.json: invalid JSON at line 2"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 3: expected a JSON object"):
        read_jsonl(tmp_path / "bad.jsonl")
    assert write_jsonl(tmp_path / "ok.jsonl", [{"a": 1}, {"b": 2}]) == 2
    assert read_jsonl(tmp_path / "ok.jsonl") == [{"a": 1}, {"b": 2}]
