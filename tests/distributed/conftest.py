"""A small real cluster per test: Redis, PostgreSQL and ``studio worker`` subprocesses.

Each test gets its own Redis database number (flushed before and after) and its own
PostgreSQL database (the ``postgres_url`` fixture), and a shared images folder standing in
for the compose volume. Workers are real ``python -m studio worker`` processes in their
own process group, so a test can SIGKILL a worker whole, pool processes included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, require_service

HEARTBEAT_S = 0.3  # fast leases so a dead worker's job moves on within about a second
RECONCILE_S = 1.0
FREE_DB_LOCK = "studio-test:owner"


@pytest.fixture
def redis_url():
    """A Redis database number no one else uses right now, flushed before and after."""
    try:
        import redis
    except ImportError:
        require_service("the redis client is not installed")
    base = REDIS_URL.rstrip("/")
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{base}/{number}")
        try:
            if client.dbsize() == 0 and client.set(FREE_DB_LOCK, os.getpid(), nx=True):
                client.flushdb()
                break
        except redis.ConnectionError as exc:
            require_service(f"Redis not reachable at {REDIS_URL}: {exc}")
        client.close()
    else:
        pytest.fail("no free Redis database number (1-15)")
    yield f"{base}/{number}"
    client.flushdb()
    client.close()


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool processes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


@dataclass
class Cluster:
    """Environment and processes of one test's cluster; everything is stopped at the end."""

    env: dict[str, str]
    tmp: Path
    workers: list[Worker] = field(default_factory=list)
    others: list[subprocess.Popen] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return Path(self.env["STUDIO_HOME"])

    def start_worker(self, *args: str, wait: bool = True) -> Worker:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        handle = open(log, "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "studio", "worker", "-Q", "testgen", "--heartbeat", str(HEARTBEAT_S),
             "--reconcile", str(RECONCILE_S), *args],
            env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
        handle.close()
        worker = Worker(proc, log)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log.read_text()[-3000:]}")
            if " ready." in worker.log.read_text():
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout} s:\n{worker.log.read_text()[-3000:]}")

    def studio(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "studio", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"studio {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {w.log.name}\n{w.log.read_text()[-4000:]}" for w in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
            try:  # pool processes left behind by a SIGTERM that came mid-start
                os.killpg(worker.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.others:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path, studio_home, postgres_url, redis_url, monkeypatch, testgen_installed):
    """Shared settings for the test process and its subprocesses; workers are stopped afterwards."""
    env_vars = {
        "STUDIO_HOME": str(studio_home),
        "STUDIO_DATABASE_URL": postgres_url,
        "STUDIO_BROKER_URL": redis_url,
        "STUDIO_LOAD_PLUGINS": "testgen",
        "STUDIO_MAX_ATTEMPTS": "3",
        "STUDIO_DEVICE": "cpu",
    }
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)
    env = dict(os.environ, **env_vars, PYTHONUNBUFFERED="1")
    env.pop("STUDIO_TESTGEN_MARKER", None)
    env.pop("STUDIO_TESTGEN_BATCH_LOG", None)
    cluster = Cluster(env=env, tmp=tmp_path)
    yield cluster
    cluster.stop()


def wait_for(predicate, timeout: float, what: str, cluster: Cluster | None = None, poll: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail with the workers' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    logs = cluster.logs() if cluster is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def submit(engine, prompt: str, count: int = 1, **params):
    """Store a job and enqueue it, as ``studio submit`` does with a broker."""
    from studio.executors.celery import enqueue

    job = engine.submit(prompt, "testgen", count=count, seed=len(prompt) * 1000, params={"size": 4, "steps": 1, **params})
    enqueue(engine.settings, job)
    return job
