"""The command line without a server: clear failures, and the batch input/output bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.client.commands.batch import done_ids, read_rows
from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    command = [sys.executable, "-m", "service", *args]
    return subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, check=False)


def test_cli_unreachable_server_exits_non_zero_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["explain", "hi"], ["generate", "hi"]):
        done = _run(*args, "--retries", "0", GLASSBOX_URL=url)
        assert done.returncode == 1 and f"cannot reach the Glassbox server at {url}" in done.stderr


def test_cli_batch_unreachable_server_stops_the_run(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "a", "target": "b"}\n')
    url = f"http://127.0.0.1:{free_port()}"
    done = _run("explain-batch", str(data), "--out", str(tmp_path / "o.jsonl"), "--retries", "0", "--url", url)
    assert done.returncode == 1 and "cannot reach" in done.stderr


def test_cli_bad_input_is_a_usage_error() -> None:
    done = _run("explain", "--prompt", "a", "--max-new-tokens", "0", "--url", "http://127.0.0.1:1")
    assert done.returncode == 2 and "max_new_tokens" in done.stderr


def test_batch_rows_ids_errors_and_shards(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    lines = [
        {"id": "a", "prompt": "p1", "target": "t"},
        {"prompt": "p2", "target": "t"},
        "not json",
        {"id": "a", "prompt": "p3"},
        {"prompt": "p4", "methods": ["nope"]},
    ]
    data.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n")
    rows = list(read_rows(data, {"scope": ["sequence"]}, (0, 1)))
    assert [r.id for r in rows] == ["a", "line:2", "line:3", "line:4", "line:5"]
    assert rows[0].request == {"prompt": "p1", "target": "t", "scope": ["sequence"]}
    assert [r.error is None for r in rows] == [True, True, False, False, False]
    assert "duplicate id" in rows[3].error["message"] and rows[4].error["param"].startswith("methods")  # type: ignore[index]
    shard = [r.line for r in read_rows(data, {}, (1, 2))]
    assert shard == [2, 4]


def test_batch_output_with_a_torn_last_line_is_cut_to_whole_rows(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "ok": true}\n{"id": "b", "ok": false}\n{"id": "c", "ok"')
    assert done_ids(out) == {"a", "b"}
    assert out.read_text().endswith("}\n") and out.read_text().count("\n") == 2
