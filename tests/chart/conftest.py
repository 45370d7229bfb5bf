"""Fixtures of the chart tests.

The install tests need a running kube-apiserver (RBAC on, admin kubeconfig). In order:

1. `PORTICO_TEST_KUBECONFIG`: a kubeconfig of a running test apiserver (e.g. the one
   `scripts/dev` prints). Nothing is started or stopped.
2. Otherwise, when a built `portico` binary (`PORTICO_BIN`, else the newest of
   target/{debug,release}/portico) is there: `portico dev --no-sample`, the repository's own
   harness (etcd + kube-apiserver, Portico on it), for the session; its kubeconfig is read from
   the `export KUBECONFIG=...` line it prints once Portico is running (its CRD Established,
   its webhooks registered): the tests adopt that CRD into their release, so must not race it.
   It finds kube-apiserver as the Rust harness does (`KUBEBUILDER_ASSETS`, else the cache of
   `scripts/build-k8s`) and says so when there is none.
3. Otherwise the install tests are skipped with a message saying so;
   `PORTICO_REQUIRE_INTEGRATION=1` turns that skip into a failure, as for the Rust suite.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest

from chartlib import REPO, Kube, env_flag

DEV_START_TIMEOUT = 180
STOP_TIMEOUT = 20


def _unavailable(message: str) -> None:
    message = f"chart install tests SKIPPED: {message}"
    if env_flag("PORTICO_REQUIRE_INTEGRATION"):
        pytest.fail(message + " (PORTICO_REQUIRE_INTEGRATION is set)", pytrace=False)
    pytest.skip(message)


def _portico_binary() -> Path | None:
    if os.environ.get("PORTICO_BIN"):
        given = Path(os.environ["PORTICO_BIN"])
        return given if given.is_file() and os.access(given, os.X_OK) else None
    candidates = [REPO / "target" / p / "portico" for p in ("debug", "release")]
    existing = [c for c in candidates if c.is_file() and os.access(c, os.X_OK)]
    return max(existing, key=lambda c: c.stat().st_mtime) if existing else None


class _DevControlPlane:
    """`portico dev --no-sample` in the background, stopped with SIGTERM (its Ctrl-C path, which
    also removes the control plane's directory)."""

    def __init__(self, binary: Path):
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [str(binary), "dev", "--no-sample"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        self.kubeconfig: Path | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            m = re.search(r"export KUBECONFIG=(\S+)", line)
            if m and self.kubeconfig is None:
                self.kubeconfig = Path(m.group(1))
                self._found.set()
        self._found.set()

    def wait(self) -> Path | None:
        self._found.wait(DEV_START_TIMEOUT)
        return self.kubeconfig

    def tail(self) -> str:
        return "\n".join(self.log[-20:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                warnings.warn(
                    f"`portico dev` did not exit within {STOP_TIMEOUT}s of SIGTERM; killed it. "
                    f"Last output:\n{self.tail()}"
                )
                self.proc.kill()
                self.proc.wait(10)
        # Killed, it cannot remove its directory (its etcd and kube-apiserver die with it).
        if self.kubeconfig is not None:
            workdir = self.kubeconfig.parent
            if workdir.name.startswith("portico-testenv-") and workdir.is_dir():
                shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    given = os.environ.get("PORTICO_TEST_KUBECONFIG")
    if given:
        path = Path(given)
        if not path.is_file():
            _unavailable(f"PORTICO_TEST_KUBECONFIG={given} is not a file")
        yield path
        return
    binary = _portico_binary()
    if binary is None:
        _unavailable(
            "no PORTICO_TEST_KUBECONFIG and no built portico binary (cargo build, or PORTICO_BIN) "
            "to start `portico dev` with"
        )
    dev = _DevControlPlane(binary)
    try:
        path = dev.wait()
        if path is None or not path.is_file():
            dev.stop()
            _unavailable(f"`{binary} dev --no-sample` printed no kubeconfig; its output:\n{dev.tail()}")
        # The admin client works once the apiserver is ready; `portico dev` prints the path after.
        deadline = time.monotonic() + 30
        while True:
            try:
                Kube(path).version()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        # `portico dev`'s promise that the install tests build on (they adopt this CRD).
        crd = Kube(path).get_opt("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rangeallocations.portico.dev")
        conditions = (crd or {}).get("status", {}).get("conditions", [])
        assert any(c["type"] == "Established" and c["status"] == "True" for c in conditions), (
            f"`portico dev` printed its kubeconfig before its CRD was Established; its output:\n{dev.tail()}"
        )
        yield path
    finally:
        dev.stop()


@pytest.fixture(scope="session")
def kube(kubeconfig: Path) -> Kube:
    return Kube(kubeconfig)
