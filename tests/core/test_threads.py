"""Threads and processes: forked, forkserver and spawned children compute what the parent computes,
N Python threads calling at once get bit-identical results on every numba threading layer, and the
thread count follows set_num_threads and torch's intra-op count.

Anything that could hang or kill the process runs in a subprocess under a timeout; a child that
dies or hangs fails the test with its output instead of taking the pytest worker with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import softmaxce
from softmaxce import _threads

SRC = os.path.dirname(os.path.dirname(softmaxce.__file__))
TIMEOUT = 240  # seconds for one subprocess (a cold numba cache compiles the kernels first)

# 256 x 512 float32 logits: 131072 >= PARALLEL_MIN_SIZE, so the parent's call starts numba's pool.
FORK_SCRIPT = """
import multiprocessing as mp
import sys

import numpy as np

import softmaxce
from softmaxce import _threads


def problem():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((256, 512)).astype(np.float32)  # (N, C): 131072 logits, parallel
    y = rng.integers(0, 512, 256)
    return z, y


def compute(_=None):
    softmaxce.set_num_threads(2)
    z, y = problem()
    loss, grad = softmaxce.cross_entropy_and_grad(z, y, label_smoothing=0.1)
    return float(loss), grad.tobytes(), _threads.get_num_threads()


def to_queue(q):
    q.put(compute())


def run(method, parent):
    ctx = mp.get_context(method.split("-")[0])
    if method.endswith("-pool"):
        with ctx.Pool(2) as pool:
            results = pool.map_async(compute, range(2)).get(timeout=120)
    else:
        q = ctx.Queue()
        p = ctx.Process(target=to_queue, args=(q,))
        p.start()
        results = [q.get(timeout=120)]
        p.join(timeout=60)
        if p.exitcode != 0:
            return f"{method}: child exit code {p.exitcode}"
    for loss, grad, threads in results:
        if loss != parent[0] or grad != parent[1]:
            return f"{method}: child's loss/grad differ from the parent's"
    return f"{method}: ok threads={results[0][2]}"


if __name__ == "__main__":
    parent = compute()
    if parent[2] != 2:
        sys.exit("the parent does not run on 2 threads")
    import numba

    print("layer", numba.threading_layer(), flush=True)
    for method in sys.argv[1:]:
        print(run(method, parent), flush=True)
"""


def _run_script(tmp_path, script: str, *args: str, env: dict | None = None) -> str:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    full_env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, str(path), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=full_env,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script hung for {TIMEOUT} s; output:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _layer_available(layer: str) -> bool:
    if layer != "tbb":
        return True
    probe = "import numba.np.ufunc.tbbpool"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="fork and forkserver start methods: Linux")
@pytest.mark.parametrize("layer", ["default", "omp", "workqueue", "tbb"])
def test_children_after_a_parallel_call_compute_what_the_parent_computes(tmp_path, layer):
    if not _layer_available(layer):
        pytest.skip(f"numba's {layer} layer cannot load here (no libtbb.so.12)")
    env = {} if layer == "default" else {"NUMBA_THREADING_LAYER": layer}
    methods = ("fork", "fork-pool", "forkserver", "spawn", "spawn-pool")
    out = _run_script(tmp_path, FORK_SCRIPT, *methods, env=env).splitlines()
    layer = out.pop(0).split()[1]
    # forked after the parent started its pool: serial drivers (same bits) unless the layer is fork-safe
    forked = 2 if layer in _threads._FORK_SAFE_LAYERS else 1
    assert out == [
        f"fork: ok threads={forked}",
        f"fork-pool: ok threads={forked}",
        # fresh interpreters: their own pool
        "forkserver: ok threads=2",
        "spawn: ok threads=2",
        "spawn-pool: ok threads=2",
    ]


def test_fork_handler_marks_the_child_only_after_a_fork_unsafe_layer_started(monkeypatch):
    monkeypatch.setattr(_threads, "_serial_only", False)
    monkeypatch.setattr(_threads, "_layer", lambda: None)
    _threads._after_fork_in_child()
    assert not _threads._serial_only  # no pool in the parent: the child may start its own
    monkeypatch.setattr(_threads, "_layer", lambda: "tbb")
    _threads._after_fork_in_child()
    assert not _threads._serial_only  # TBB is fork-safe
    for layer in ("omp", "workqueue"):
        monkeypatch.setattr(_threads, "_serial_only", False)
        monkeypatch.setattr(_threads, "_layer", lambda layer=layer: layer)
        _threads._after_fork_in_child()
        assert _threads._serial_only and not _threads.parallel_allowed() and _threads.get_num_threads() == 1


CONCURRENT_SCRIPT = """
import sys
import threading

import numpy as np
import numba

import softmaxce

WORKERS, ROUNDS = 4, 3


def calls():
    rng = np.random.default_rng(11)
    z = rng.standard_normal((300, 1000)).astype(np.float32)  # 300000 logits: parallel drivers
    y = rng.integers(0, 1000, 300)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    W = (0.1 * rng.standard_normal((1000, 64))).astype(np.float32)
    out = {
        "ce": lambda: softmaxce.cross_entropy_and_grad(z, y, label_smoothing=0.1),
        "linear": lambda: softmaxce.linear_cross_entropy_and_grad(x, W, y),
    }
    if "--torch" in sys.argv:
        import torch

        import softmaxce.torch as sct

        def torch_ce():
            zt = torch.from_numpy(z).requires_grad_()
            loss = sct.cross_entropy(zt, torch.from_numpy(y))
            loss.backward()
            return loss.detach().numpy(), zt.grad.numpy()

        out["torch"] = torch_ce
    return out


def as_bytes(result):
    return [np.asarray(a).tobytes() for a in result]


if __name__ == "__main__":
    softmaxce.set_num_threads(2)
    expected = {name: as_bytes(f()) for name, f in calls().items()}
    print("layer", numba.threading_layer(), flush=True)
    errors = []

    def worker():
        try:
            for _ in range(ROUNDS):
                for name, f in calls().items():
                    if as_bytes(f()) != expected[name]:
                        errors.append(f"{name} differs")
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    if any(t.is_alive() for t in threads):
        sys.exit("a worker thread hung")
    if errors:
        sys.exit("; ".join(sorted(set(errors))))
    print("ok", flush=True)
"""


@pytest.mark.parametrize("layer", ["omp", "workqueue", "tbb"])
def test_concurrent_calls_are_bit_identical_on_every_layer(tmp_path, layer):
    if not _layer_available(layer):
        pytest.skip(f"numba's {layer} layer cannot load here (no libtbb.so.12)")
    pytest.importorskip("torch")
    out = _run_script(tmp_path, CONCURRENT_SCRIPT, "--torch", env={"NUMBA_THREADING_LAYER": layer}).split()
    assert out == ["layer", layer, "ok"]


def test_concurrent_calls_in_this_process(rng):
    """The same in the pytest process, on whatever layer numba picked here."""
    z = rng.standard_normal((300, 1000)).astype(np.float32)
    y = rng.integers(0, 1000, 300)
    before = softmaxce.get_num_threads()
    softmaxce.set_num_threads(min(2, before))
    try:
        loss, grad = softmaxce.cross_entropy_and_grad(z, y)
        results: list = []

        def worker():
            for _ in range(3):
                results.append(softmaxce.cross_entropy_and_grad(z, y))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
    finally:
        softmaxce.set_num_threads(before)
    assert len(results) == 12
    for other_loss, other_grad in results:
        assert other_loss == loss
        assert_array_equal(other_grad, grad)


def test_set_num_threads_holds_in_other_threads():
    before = softmaxce.get_num_threads()
    seen = []
    try:
        softmaxce.set_num_threads(1)
        t = threading.Thread(target=lambda: seen.append((softmaxce.get_num_threads(), _threads.parallel_allowed())))
        t.start()
        t.join(timeout=30)
    finally:
        softmaxce.set_num_threads(before)
    assert seen == [(1, False)]


def test_torch_threads_caps_the_count_at_torchs(monkeypatch):
    torch = pytest.importorskip("torch")
    before = softmaxce.get_num_threads()
    torch_before = torch.get_num_threads()
    try:
        softmaxce.set_num_threads(2) if before >= 2 else None
        torch.set_num_threads(1)
        with _threads.torch_threads():
            assert softmaxce.get_num_threads() == 1
            assert not _threads.parallel_allowed()
            torch.set_num_threads(64)
            with _threads.torch_threads():  # nests; the smaller of torch's and softmaxce's count wins
                assert softmaxce.get_num_threads() == min(2, before)
            assert softmaxce.get_num_threads() == 1
        assert softmaxce.get_num_threads() == min(2, before)
    finally:
        torch.set_num_threads(torch_before)
        softmaxce.set_num_threads(before)


def test_kernel_region_sets_numbas_count_and_locks_only_on_workqueue(monkeypatch):
    import numba

    before = softmaxce.get_num_threads()
    try:
        softmaxce.set_num_threads(1)
        numba_before = numba.get_num_threads()
        with _threads.kernel_region(False):
            assert numba.get_num_threads() == numba_before  # serial: untouched
        monkeypatch.setattr(_threads, "_lock_regions", None)
        monkeypatch.setattr(_threads, "_layer", lambda: "workqueue")
        assert _threads.kernel_region(True) is _threads._region_lock
        assert numba.get_num_threads() == 1
        monkeypatch.setattr(_threads, "_lock_regions", None)
        monkeypatch.setattr(_threads, "_layer", lambda: "omp")
        assert _threads.kernel_region(True) is not _threads._region_lock
    finally:
        softmaxce.set_num_threads(before)
