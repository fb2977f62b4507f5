"""The runner's Dask backend: same model as serial, TLS, separate-process clusters, a worker killed mid-run.

Skipped where ``dask.distributed`` is not installed (``pip install 'geomvision[distributed]'``). All
schedulers listen on 127.0.0.1; every process started here is ended by pid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from process_helpers import default_sigint, descendant_pids, finished_features
from reliability_images import fast_config, render, write_image

from geomvision.errors import InputError
from geomvision.pipeline import run_pipeline
from geomvision.runtime import dask_backend
from geomvision.runtime.runner import DaskSettings, Shared, Stage, open_runner

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = ("cameras.txt", "images.txt", "points3D.txt")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dask_imgs")
    for k, image in enumerate(render(5).images):
        write_image(folder / f"v{k}.png", image)
    return folder


@pytest.fixture(scope="module")
def serial_model(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    run_pipeline(images, out, fast_config(backend="serial"))
    return out


def _same_model(a: Path, b: Path) -> None:
    for name in MODEL_FILES:
        assert (a / "sparse" / "0" / name).read_bytes() == (b / "sparse" / "0" / name).read_bytes(), name


def test_local_cluster_equals_serial(images, serial_model, tmp_path):
    """A LocalCluster of 2 single-threaded worker processes (image bytes shipped): byte-identical model."""
    out = tmp_path / "out"
    result = run_pipeline(images, out, fast_config(workers=2, scheduler="local"))
    _same_model(serial_model, out)
    engine = result.report["engine"]
    assert engine["backend"] == "dask" and engine["workers"] == 2 and engine["scheduler"] == "local"
    assert engine["images_visible_to_workers"] is False and engine["startup_s"] > 0
    assert (out / "view_graph.png").is_file()  # drawn by a LocalCluster worker, beside the mapper
    features = engine["stages"]["features"]
    # The client shipped every image's bytes: at least the files' size went out.
    assert features["bytes_sent"] >= sum(p.stat().st_size for p in images.iterdir())
    assert engine["stages"]["two_view"]["items"] >= 10 and engine["wait_s"] > 0  # + self-calibration
    report = json.loads((out / "report.json").read_text())
    assert report["engine"]["tasks"] == engine["tasks"] > 0


def shared_sum_task(item: tuple, marker: str | None) -> float:
    """``index + sum(shared array)``; with a marker path, the task of index 5 first kills its worker."""
    index, values = item
    if marker is not None and index == 5 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)  # the worker dies, and with it the scattered data it holds
    return index + float(values.sum())


SHARED_SUM = Stage(name="shared_sum", task=shared_sum_task, version=1, batch_size=1)


def _shared_inputs(arrays):
    return lambda k: (k, Shared(key=("values", k % len(arrays)), value=arrays[k % len(arrays)]))


def test_shared_inputs_are_sent_once_per_map():
    """8 one-item batches over 2 shared arrays of 1 MB: each array goes out once, not once per batch."""
    arrays = [np.full(125_000, float(v)) for v in (1, 2)]  # 1 MB each
    expected = [k + float(arrays[k % 2].sum()) for k in range(8)]
    with open_runner("dask", 2) as runner:
        assert runner.map(SHARED_SUM, range(8), inputs=_shared_inputs(arrays)) == expected
        stats = runner.stats["shared_sum"]
        assert stats.tasks == 8
        assert 2 * arrays[0].nbytes <= stats.bytes_sent < 3 * arrays[0].nbytes
        # A second map call sends them again (workers drop them at the end of a call).
        runner.map(SHARED_SUM, range(8), inputs=_shared_inputs(arrays))
        assert 4 * arrays[0].nbytes <= stats.bytes_sent < 5 * arrays[0].nbytes


def test_shared_inputs_lost_with_a_worker_are_sent_again(tmp_path, caplog):
    """The only worker dies holding the scattered arrays: the client sends them again, results are right."""
    arrays = [np.full(1000, float(v)) for v in (1, 2, 3)]
    expected = [k + float(arrays[k % 3].sum()) for k in range(12)]
    marker = tmp_path / "killed"
    with caplog.at_level(logging.WARNING, logger="geomvision.runtime.dask_backend"):
        with open_runner("dask", 1) as runner:
            results = runner.map(SHARED_SUM, range(12), inputs=_shared_inputs(arrays), context=str(marker))
    assert marker.exists()  # the worker really was killed once
    assert results == expected
    assert "lost with a worker" in caplog.text


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list sockets")
def test_local_cluster_listens_on_loopback_only():
    """Scheduler, nannies, workers and their HTTP servers of ``--scheduler local``: 127.0.0.1 only."""
    with open_runner("dask", 2, dask=DaskSettings(scheduler="local")) as runner:
        assert runner.map_function("abs")(abs, [-1, 2]) == [1, 2]
        ours = {os.getpid()} | descendant_pids(os.getpid())
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30).stdout
        addresses = [
            line.split()[3] for line in listening.splitlines() if any(f"pid={pid}," in line for pid in ours)
        ]
    assert len(addresses) >= 3  # scheduler + two workers at least
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses


def test_ctrl_c_on_a_local_cluster_is_one_line(images, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, workers included): one line, exit 130, and the
    interruption recorded with the engine section; the cluster's workers stay silent."""
    out = tmp_path / "out"
    proc = _reconstruct(images, out, "--scheduler", "local", "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while not finished_features(out) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["engine"]["backend"] == "dask"


def test_missing_dask_is_one_line(monkeypatch):
    monkeypatch.setattr(dask_backend, "distributed", None)
    with pytest.raises(InputError, match=r"pip install 'geomvision\[distributed\]'"):
        open_runner("dask", 1)


def test_bad_scheduler_address():
    with pytest.raises(InputError, match="scheduler"):
        open_runner("dask", 1, dask=DaskSettings(scheduler="127.0.0.1:8786"))


def _self_signed(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert.pem, key.pem)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither cryptography nor openssl is available to make a certificate")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        return str(cert), str(key)
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert), str(key)


def test_tls_secured_scheduler(tmp_path):
    """A scheduler that requires TLS: our client connects with the certificate files; a plain one cannot."""
    from distributed import LocalCluster
    from distributed.security import Security

    cert, key = _self_signed(tmp_path)
    security = Security(
        tls_ca_file=cert,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        host="127.0.0.1",
        protocol="tls://",
        security=security,
        dashboard_address=None,
    )
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        settings = DaskSettings(scheduler=address, tls_ca_file=cert, tls_cert_file=cert, tls_key_file=key)
        with open_runner("dask", dask=settings) as runner:
            assert runner.map_function("abs")(abs, [-2, 3]) == [2, 3]
        with pytest.raises(InputError, match="TLS needs all"):
            open_runner("dask", dask=DaskSettings(scheduler=address, tls_ca_file=cert))
        with pytest.raises((InputError, OSError, TypeError, ValueError)):
            # Without certificates the client cannot even speak to a tls:// address.
            open_runner("dask", dask=DaskSettings(scheduler=address.replace("tls://", "tcp://")))
    finally:
        cluster.close()


# --- separate OS processes (slow) -----------------------------------------------------------------------------
def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "distributed.cli.dask_spawn"]


class _Cluster:
    """`dask scheduler` + `dask worker` processes, each in its own working directory, on 127.0.0.1."""

    def __init__(self, root: Path, num_workers: int) -> None:
        self.root = root
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}  # workers import geomvision, never the data
        self.procs: list[subprocess.Popen] = []
        sched_dir = root / "scheduler"
        sched_dir.mkdir()
        info = sched_dir / "scheduler.json"
        self._start(
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(info),
            ],
            sched_dir,
        )
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert info.exists(), "the scheduler did not start"
        time.sleep(0.2)
        self.address = json.loads(info.read_text())["address"]
        assert self.address.startswith("tcp://127.0.0.1:")
        self.workers = []
        for k in range(num_workers):
            wdir = root / f"worker{k}"
            wdir.mkdir()
            self.workers.append(
                self._start(
                    ["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                     "--no-dashboard", "--local-directory", str(wdir), "--name", f"w{k}"],
                    wdir,
                )
            )  # fmt: skip
        client = distributed.Client(self.address, timeout=60)
        try:
            client.wait_for_workers(num_workers, timeout=90)
        finally:
            client.close()

    def _start(self, args: list[str], cwd: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*_dask_cli(), *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _reconstruct(images: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "geomvision", "reconstruct", str(images), "-o", str(out), "--no-progress",
         "--max-features", "1000", *extra],
        cwd=out.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )  # fmt: skip


@pytest.fixture(scope="module")
def serial_cli_model(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial_cli") / "out"
    proc = _reconstruct(images, out, "--backend", "serial")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


@pytest.mark.slow
def test_separate_process_cluster_by_address(images, serial_cli_model, tmp_path):
    """`dask scheduler` + two `dask worker` processes, connected to by address: the serial model."""
    cluster = _Cluster(tmp_path, 2)
    try:
        out = tmp_path / "out"
        proc = _reconstruct(images, out, "--scheduler", cluster.address)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        _same_model(serial_cli_model, out)
        engine = json.loads((out / "report.json").read_text())["engine"]
        assert engine["backend"] == "dask" and engine["workers"] == 2
        assert engine["scheduler"] == cluster.address
        # The workers never saw the image folder: their working folders hold no image.
        for k in range(2):
            assert not list((tmp_path / f"worker{k}").rglob("*.png"))
    finally:
        cluster.close()


@pytest.mark.slow
def test_worker_killed_mid_run_is_recomputed(images, serial_cli_model, tmp_path):
    """SIGKILL of one worker process while tasks run: Dask recomputes its tasks, the model is the same."""
    cluster = _Cluster(tmp_path, 2)
    try:
        out = tmp_path / "out"
        proc = _reconstruct(images, out, "--scheduler", cluster.address)
        victim = cluster.workers[0]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if finished_features(out):
                break  # work is flowing: some tasks done, others queued or running
            time.sleep(0.02)
        targets = {victim.pid} | descendant_pids(victim.pid)
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert victim.wait(timeout=30) is not None  # the worker really is gone
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        _same_model(serial_cli_model, out)
        client = distributed.Client(cluster.address, timeout=30)
        try:
            assert len(client.scheduler_info()["workers"]) == 1  # the run finished on the survivor
        finally:
            client.close()
    finally:
        cluster.close()
