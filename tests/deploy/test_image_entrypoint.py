"""The image's entry command, run from the project's environment the way the container runs it.

``ENTRYPOINT`` + ``CMD`` and ``ENV`` are read from deploy/Dockerfile; ``glassbox`` resolves to the project
venv's console script, as it resolves to /opt/venv's in the image. The server runs:

- as the image's ``USER`` (uid/gid 10001, no supplementary groups, no capabilities, no_new_privs);
- in a private mount namespace (``unshare --mount``) whose root filesystem, and with it the project folder
  and the venv, is re-mounted read-only, like ``readOnlyRootFilesystem: true``; only a fresh tmpfs on
  /tmp and the model cache folder are writable, like the pod's emptyDir volumes. Before the server
  starts, the helper proves that the project folder, the venv and / refuse writes (EROFS) and the cache
  accepts them; the test then reads the server's own /proc entries for its uid and its read-only root;
- with GLASSBOX_MODELS pointing at the tiny test model and GLASSBOX_PORT at a free loopback port.

It must answer 200 on /readyz within the bound, export the autoscaling gauge, and exit cleanly on SIGTERM.
Needs root (to mount and to switch user); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT, final_stage

READY_WITHIN_S = 120.0
STOP_WITHIN_S = 60.0
SCRATCH_PARENT = Path("/var/tmp")  # world-traversable and on the root filesystem, so it turns read-only

# Runs as root inside the new mount namespace, then becomes the image's user and execs the entry command.
HELPER = r"""
import ctypes, errno, json, os, subprocess, sys
cfg = json.loads(sys.argv[1])

def mount(*args):
    subprocess.run(["mount", *args], check=True)

# Mount a fresh tmpfs on `ancestor` and bind `paths` (folders under it) back in; returns them.
def cover(tag, ancestor, paths, tmpfs_options):
    stages = []
    for j, path in enumerate(paths):
        stage = os.path.join(cfg["stage_dir"], f"{tag}-{j}")
        os.makedirs(stage)
        mount("--bind", path, stage)
        stages.append((stage, path))
    mount("-t", "tmpfs", "-o", tmpfs_options, "tmpfs", ancestor)
    for stage, path in stages:
        os.makedirs(path, exist_ok=True)
        mount("--bind", stage, path)
    return paths

# 1. Folders the unprivileged user could not reach (e.g. an interpreter under /root, mode 0700): cover the
#    hidden ancestor with an empty tmpfs and bind just the needed folders back in, read-only.
for i, (ancestor, paths) in enumerate(sorted(cfg["hidden"].items())):
    for path in cover(i, ancestor, paths, "mode=0755,size=1m"):
        mount("-o", "remount,bind,ro", path)
    mount("-o", "remount,bind,ro", ancestor)

# 2. The cache stays writable: its own bind mount, not affected by the read-only remounts below.
mount("--bind", cfg["cache"], cfg["cache"])

# 3. A private, writable /tmp, like the pod's emptyDir. What the server needs from under /tmp (a checkout
#    or a model there, as in CI) is bound back in first; the next step makes those binds read-only.
under_tmp = sorted({p for p in (cfg["project"], cfg["venv"], cfg["model"]) if p.startswith("/tmp/")})
cover("tmp", "/tmp", under_tmp, "mode=1777,size=512m")

# 4. Read-only root filesystem (per-mount flag of this namespace only), and read-only mounts of anything
#    else the project or the venv lives on.
targets = {"/"}
for path in (cfg["project"], cfg["venv"], cfg["model"]):
    out = subprocess.run(["findmnt", "-n", "-o", "TARGET", "-T", path], check=True, capture_output=True, text=True)
    targets.update(out.stdout.split())  # one line per mount stacked on the target: the same target
for target in sorted(targets):
    if target != cfg["cache"]:
        mount("-o", "remount,bind,ro", target)


def writable(folder):
    probe = os.path.join(folder, ".glassbox-write-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        return exc.errno
    os.close(fd)
    os.unlink(probe)
    return 0

# Even root cannot write there now: the mounts, not permissions, refuse.
for folder in (cfg["project"], cfg["venv"], cfg["model"], "/"):
    if writable(folder) != errno.EROFS:
        sys.exit(f"helper: {folder} is not read-only")

# 5. Become the image's user for good: no groups, no capabilities, no privilege escalation.
os.setgroups([])
os.setgid(cfg["gid"])
os.setuid(cfg["uid"])
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("helper: prctl(PR_SET_NO_NEW_PRIVS) failed")
if os.getuid() == 0 or os.geteuid() == 0:
    sys.exit("helper: still root")
for folder in (cfg["project"], "/"):
    if writable(folder) != errno.EROFS:
        sys.exit(f"helper: {folder} is writable by the server user")
for folder in (cfg["cache"], "/tmp"):
    if writable(folder) != 0:
        sys.exit(f"helper: {folder} is not writable by the server user")
print("helper: read-only root, project and venv; writable /tmp and cache; uid", os.getuid(), flush=True)
os.chdir(cfg["workdir"])
os.execvpe(cfg["argv"][0], cfg["argv"], cfg["env"])
"""


def _traversable(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _hidden_ancestors(paths: list[Path], uid: int, gid: int) -> dict[str, list[str]]:
    """For each folder the user cannot reach: its highest unreachable ancestor -> the folders under it."""
    hidden: dict[str, list[str]] = {}
    for path in paths:
        for ancestor in [*reversed(path.parents), path]:
            if ancestor != Path("/") and not _traversable(ancestor, uid, gid):
                hidden.setdefault(str(ancestor), []).append(str(path))
                break
    return {anc: sorted(set(paths)) for anc, paths in hidden.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="glassbox-entry-", dir=SCRATCH_PARENT))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def checkout_open_to_image_user() -> Iterator[None]:
    """Binds can hide a closed ancestor, but not open a closed folder itself: a checkout made in a private
    folder (e.g. `mktemp -d`, mode 0700) gets traverse permission (o+x, no listing) for the test's length."""
    uid, gid = (int(x) for x in (final_stage().user or "0:0").split(":"))
    changed = []
    try:
        for folder in (ROOT, Path(sys.prefix)):
            if not _traversable(folder, uid, gid):
                mode = stat.S_IMODE(folder.stat().st_mode)
                folder.chmod(mode | stat.S_IXOTH)
                changed.append((folder, mode))
        yield
    finally:
        for folder, mode in changed:
            folder.chmod(mode)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to mount and switch user")
@pytest.mark.usefixtures("checkout_open_to_image_user")
def test_entry_command_serves_as_image_user_on_read_only_root(tiny_model_dir: Path, scratch: Path) -> None:
    for tool in ("unshare", "mount", "findmnt"):
        assert shutil.which(tool), f"{tool} (util-linux) is needed"
    stage = final_stage()
    assert isinstance(stage.entrypoint, list) and isinstance(stage.cmd, list), "exec-form ENTRYPOINT/CMD"
    argv = [*stage.entrypoint, *stage.cmd]
    uid, gid = (int(x) for x in (stage.user or "0:0").split(":"))
    assert uid != 0

    venv = Path(sys.prefix)
    venv_bin = venv / "bin"
    assert (venv_bin / argv[0]).is_file(), f"{argv[0]} is not installed in {venv_bin}"
    base_prefix = Path(sys.base_prefix).resolve()

    model = scratch / "model"
    shutil.copytree(tiny_model_dir, model)  # the fixture's folder is private to root
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    cache = scratch / "cache"
    cache.mkdir()
    os.chown(cache, uid, gid)
    (scratch / "stage").mkdir()
    port = _free_port()

    # The image's environment, with /opt/venv replaced by the project venv and the test's own model,
    # cache folder and loopback port.
    env = dict(stage.env)
    image_path = env.get("PATH", "$PATH").replace(
        "$PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    env["PATH"] = image_path.replace("/opt/venv/bin", str(venv_bin))
    env.update(
        GLASSBOX_MODELS=f"tiny={model}",
        GLASSBOX_CACHE_DIR=str(cache),
        GLASSBOX_HOST="127.0.0.1",
        GLASSBOX_PORT=str(port),
        GLASSBOX_DRAIN_TIMEOUT_S="5",
        GLASSBOX_LOG_LEVEL="info",
    )
    assert env["HF_HUB_OFFLINE"] == "1"
    needs = [base_prefix, venv, ROOT]
    config = {
        "hidden": _hidden_ancestors(needs, uid, gid),
        "stage_dir": str(scratch / "stage"),
        "project": str(ROOT),
        "venv": str(venv),
        "model": str(model),
        "cache": str(cache),
        "uid": uid,
        "gid": gid,
        "workdir": "/",
        "argv": argv,
        "env": env,
    }
    log_path = scratch / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", HELPER, json.dumps(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

    def output() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        deadline = time.monotonic() + READY_WITHIN_S
        started = time.monotonic()
        status = 0
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the entry command exited with {process.returncode}:\n{output()}")
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.25)
        assert status == 200, f"/readyz not 200 after {READY_WITHIN_S} s (last {status}):\n{output()}"
        ready_after = time.monotonic() - started

        # It is the server process itself (exec all the way down), as the image's user, on a read-only root.
        proc_status = Path(f"/proc/{process.pid}/status").read_text()
        uids = next(line.split()[1:] for line in proc_status.splitlines() if line.startswith("Uid:"))
        assert uids == [str(uid)] * 4, f"server uids {uids}"
        caps = next(line.split()[1] for line in proc_status.splitlines() if line.startswith("CapEff:"))
        assert int(caps, 16) == 0, f"server has capabilities {caps}"
        root_mount = next(
            line.split()
            for line in Path(f"/proc/{process.pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        )
        assert "ro" in root_mount[5].split(","), f"server's root mount is not read-only: {root_mount}"
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"/glassbox") for part in cmdline), cmdline
        # the whole log: the helper's line comes first and the server's start-up logs can push it out of output()
        assert "helper: read-only root" in log_path.read_text(errors="replace"), output()

        code, health = _get(f"http://127.0.0.1:{port}/healthz")
        assert code == 200, health
        code, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and "glassbox_queue_depth" in metrics, "the autoscaling gauge is not exported"

        # SIGTERM (what `docker stop` and the kubelet send) reaches the server, which shuts down cleanly.
        stop_started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within {STOP_WITHIN_S} s of SIGTERM:\n{output()}")
        # uvicorn finishes its graceful shutdown, then re-raises the signal it caught, so the status is
        # "killed by SIGTERM" (-15; 143 in Docker) after a clean lifespan shutdown, or 0.
        assert returncode in (0, -signal.SIGTERM), f"exit status {returncode} after SIGTERM:\n{output()}"
        assert "Application shutdown complete" in output(), f"no graceful shutdown:\n{output()}"
        print(f"ready after {ready_after:.1f} s, stopped {time.monotonic() - stop_started:.1f} s after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
