"""Resources: a request larger than the available memory fails at once with MemoryError naming its
bytes (before any work), normal calls are unaffected, and the first call works on an install its
user cannot write (numba's cache then goes to the user's cache directory)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import softmaxce
from softmaxce import _resources


def _needed_bytes(message: str) -> int:
    match = re.search(r"needs (\d+) bytes .* only (\d+) bytes", message)
    assert match, message
    return int(match.group(1))


def test_small_requests_read_nothing(monkeypatch):
    def boom():
        raise AssertionError("read the memory files for a small request")

    monkeypatch.setattr(_resources, "available_memory", boom)
    _resources.check_memory(_resources.CHECK_MIN_BYTES, "cross_entropy")
    softmaxce.cross_entropy_and_grad(np.zeros((4, 5), np.float32), np.zeros(4, np.int64))


def test_check_memory_names_the_bytes(monkeypatch):
    monkeypatch.setattr(_resources, "available_memory", lambda: 100 * 2**20)
    _resources.check_memory(100 * 2**20, "cross_entropy")  # exactly what is available: fine
    with pytest.raises(MemoryError, match=r"cross_entropy needs 104857601 bytes .* only 104857600 bytes"):
        _resources.check_memory(100 * 2**20 + 1, "cross_entropy")


def test_unknown_memory_skips_the_check(monkeypatch):
    monkeypatch.setattr(_resources, "available_memory", lambda: None)
    _resources.check_memory(2**62, "cross_entropy")


def test_available_memory_is_the_smaller_of_machine_and_cgroup(monkeypatch):
    monkeypatch.setattr(_resources, "_machine_available", lambda: 8 * 2**30)
    monkeypatch.setattr(_resources, "_cgroup_available", lambda: 2 * 2**30)
    assert _resources.available_memory() == 2 * 2**30
    monkeypatch.setattr(_resources, "_cgroup_available", lambda: None)
    assert _resources.available_memory() == 8 * 2**30
    monkeypatch.setattr(_resources, "_machine_available", lambda: None)
    assert _resources.available_memory() is None


def test_cgroup_limit_minus_usage(tmp_path, monkeypatch):
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("268435456\n")
    monkeypatch.setattr(_resources, "_cgroup_dirs", lambda: [str(tmp_path)])
    assert _resources._cgroup_available() == 768 * 2**20
    (tmp_path / "memory.max").write_text("max\n")  # no limit
    assert _resources._cgroup_available() is None


@pytest.mark.skipif(_resources.available_memory() is None, reason="the available memory is unknown here")
def test_cross_entropy_beyond_memory_fails_before_any_work():
    P, C = 2**21, 2**20  # 8 TiB of float32 logits, but one zero-stride element in memory
    logits = np.broadcast_to(np.float32(0.0), (P, C))
    target = np.zeros(P, np.int64)
    start = time.perf_counter()
    with pytest.raises(MemoryError, match="cross_entropy needs") as info:
        softmaxce.cross_entropy_and_grad(logits, target)
    assert time.perf_counter() - start < 5.0  # failed at the check, not after trying to copy 8 TiB
    assert _needed_bytes(str(info.value)) >= 2 * P * C * 4  # the contiguous copy and the gradient


@pytest.mark.skipif(_resources.available_memory() is None, reason="the available memory is unknown here")
def test_fused_head_beyond_memory_fails_before_any_work(rng):
    P, D, V = 2**20, 1, 2**17  # chunk_size=P: a (P, V) float32 buffer of 512 GiB
    x = rng.standard_normal((P, D)).astype(np.float32)
    W = rng.standard_normal((V, D)).astype(np.float32)
    y = np.zeros(P, np.int64)
    with pytest.raises(MemoryError, match="linear_cross_entropy needs") as info:
        softmaxce.linear_cross_entropy_and_grad(x, W, y, chunk_size=P)
    assert _needed_bytes(str(info.value)) >= P * V * 4


def test_large_normal_call_is_unaffected(rng):
    logits = rng.standard_normal((2048, 9000)).astype(np.float32)  # 70 MiB: above the check's floor
    target = rng.integers(0, 9000, 2048)
    loss, grad = softmaxce.cross_entropy_and_grad(logits, target)
    assert np.isfinite(loss) and grad.shape == logits.shape


# ---------------------------------------------------------------------------- read-only install

FIRST_CALL = """
import json, os, sys, time

import softmaxce

package = os.path.dirname(softmaxce.__file__)
try:
    open(os.path.join(package, "probe"), "w").close()
    sys.exit(f"the install at {package} is writable by this user")
except PermissionError:
    pass
import numpy as np

rng = np.random.default_rng(0)
z = rng.standard_normal((512, 1000)).astype(np.float32)  # 512000 logits: the parallel drivers too
y = rng.integers(0, 1000, 512)
t0 = time.perf_counter()
loss, grad = softmaxce.cross_entropy_and_grad(z, y)
first = time.perf_counter() - t0
loss2, grad2 = softmaxce.cross_entropy_and_grad(z[:8, :10].copy(), y[:8] % 10)  # serial drivers
print(json.dumps({"first_call_s": first, "loss": float(loss), "uid": os.getuid()}))
"""


def _owned_by_others_ok(path: str) -> bool:
    """Whether every directory on the way to `path` lets any user in (o+x)."""
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _unprivileged_runner() -> tuple[str, object] | None:
    """How to run a child that cannot write a root-owned, mode 0555 directory: ("user", preexec) as
    `nobody` when the interpreter is reachable by others; ("nocaps", preexec) as root without the
    capabilities that bypass file permissions; ("self", None) when already unprivileged."""
    if sys.platform != "linux":
        return None
    if os.geteuid() != 0:
        return ("self", None)
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        nobody = None
    reachable = all(_owned_by_others_ok(p) for p in (sys.executable, sys.prefix, os.path.dirname(np.__file__)))
    if nobody is not None and reachable:

        def as_nobody():
            os.setgid(nobody.pw_gid)
            os.setgroups([])
            os.setuid(nobody.pw_uid)

        return ("user", as_nobody)

    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2

    def without_dac_caps():
        # execve gives root only the capabilities left in the bounding set: without these two, root
        # obeys the permission bits like any user
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return ("nocaps", without_dac_caps)


def test_first_call_on_a_read_only_install(tmp_path):
    runner = _unprivileged_runner()
    if runner is None:
        pytest.skip("no way to run an unprivileged child here (needs Linux)")
    kind, preexec = runner
    site = tmp_path / "site"
    package = site / "softmaxce"
    shutil.copytree(os.path.dirname(softmaxce.__file__), package, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(tmp_path, 0o755)
    if kind == "user":
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
    for root, dirs, files in os.walk(site, topdown=False):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o555)
    os.chmod(site, 0o555)
    script = tmp_path / "first_call.py"
    script.write_text(textwrap.dedent(FIRST_CALL))
    os.chmod(script, 0o444)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CACHE_DIR", "PYTHON", "XDG_CACHE"))}
    env.update(PYTHONPATH=str(site), HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=str(home),
            preexec_fn=preexec,
        )
    except (PermissionError, OSError, subprocess.SubprocessError) as e:
        if isinstance(e, subprocess.TimeoutExpired):
            raise
        pytest.skip(f"cannot start an unprivileged child ({kind}): {e}")
    finally:
        for root, _dirs, _ in os.walk(site):
            os.chmod(root, 0o755)  # let pytest clean up
    assert proc.returncode == 0, f"{kind}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.isfinite(result["loss"])
    cached = [f for _, _, files in os.walk(home) for f in files if f.endswith((".nbi", ".nbc"))]
    assert cached, "numba cached nothing in the user's cache directory"
    print(f"first call on a read-only install ({kind}, uid {result['uid']}): {result['first_call_s']:.1f} s")


@pytest.mark.parametrize("shape", [(0,), (3,), (7, 5), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_aligned_array(shape, dtype):
    for zero in (False, True):
        a = _resources.aligned_array(shape, dtype, zero=zero)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % _resources.ALIGN == 0
        if zero:
            assert not a.any()
        a[...] = 1  # the whole array is usable memory
        assert a.sum() == a.size


def test_scratch_is_reused_per_thread_and_bounded():
    a = _resources.scratch("test-slot", 100)
    b = _resources.scratch("test-slot", 50)
    assert a.dtype == np.float64 and a.shape == (100,) and b.shape == (50,)
    assert np.shares_memory(a, b)  # the slot's array, reused
    assert not np.shares_memory(a, _resources.scratch("other-slot", 100))
    assert not np.shares_memory(a, _resources.scratch("test-slot", 100, np.int64))  # another dtype: new
    big = _resources.SCRATCH_MAX_BYTES // 8 + 1
    assert not np.shares_memory(_resources.scratch("big-slot", big), _resources.scratch("big-slot", big))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_resources.scratch("test-slot", 100)))
    thread.start()
    thread.join()
    assert not np.shares_memory(seen[0], _resources.scratch("test-slot", 100))  # each thread its own


def test_results_never_alias_scratch():
    """Losses returned for reduction="none", the statistics and the fused head's per-position results are
    the caller's own arrays: later calls (which reuse the scratch arrays) leave them unchanged."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 7))
    t = rng.integers(0, 7, 300)
    x, W = rng.standard_normal((300, 5)), rng.standard_normal((7, 5))
    results = [
        softmaxce.cross_entropy(z, t, reduction="none"),
        softmaxce.cross_entropy_and_grad(z, t, reduction="none")[0],
        *(lambda r: (r.loss, r.lse, r.entropy))(softmaxce.cross_entropy_with_stats(z, t, reduction="none")),
        softmaxce.linear_cross_entropy(x, W, t, reduction="none"),
    ]
    kept = [r.copy() for r in results]
    softmaxce.cross_entropy_and_grad(z[::-1] * 3, t, reduction="none")
    softmaxce.cross_entropy_with_stats(z * 2, t[::-1], compute_grad=True)
    softmaxce.linear_cross_entropy_and_grad(x * 2, W, t, reduction="none")
    for r, k in zip(results, kept, strict=True):
        assert np.array_equal(r, k)


# ----------------------------------------------------------------------------- the gradient cache

BIG = (1024, 1024)  # float32: exactly CACHE_MIN_BYTES, the smallest cached gradient


@pytest.fixture
def cache():
    """The gradient cache, emptied before and restored (limit and contents emptied) after the test."""
    limit = softmaxce.get_gradient_cache()
    softmaxce.set_gradient_cache(0)
    softmaxce.set_gradient_cache(64 * 2**20)
    yield _resources._cache_free
    softmaxce.set_gradient_cache(0)
    softmaxce.set_gradient_cache(limit)


def test_a_freed_gradient_is_reused(cache):
    a = _resources.gradient_array(BIG, np.float32)
    assert math.prod(BIG) * 4 == _resources.CACHE_MIN_BYTES
    assert a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % _resources.ALIGN == 0
    address = a.ctypes.data
    assert cache == []
    del a
    assert len(cache) == 1  # the memory of the freed gradient is kept ...
    b = _resources.gradient_array((512, 2048), np.float32)
    assert b.ctypes.data == address and cache == []  # ... and the next gradient that fits takes it
    b[...] = 1.0
    assert b.sum() == b.size


def test_a_gradient_still_viewed_is_not_reused(cache):
    torch = pytest.importorskip("torch")
    a = _resources.gradient_array(BIG, np.float32)
    view = a[1:, ::2]
    tensor = torch.from_numpy(a[:5])
    del a
    b = _resources.gradient_array(BIG, np.float32)
    assert not np.shares_memory(b, view) and not np.shares_memory(b, tensor.numpy())
    del view
    assert cache == []  # the tensor still views it
    del tensor
    assert len(cache) == 1


def test_the_cache_keeps_at_most_its_limit(cache):
    small = _resources.gradient_array((1, _resources.CACHE_MIN_BYTES - 1), np.uint8)
    del small
    assert cache == []  # below CACHE_MIN_BYTES: NumPy's allocator
    softmaxce.set_gradient_cache(10 * 2**20)
    a, b, c = (_resources.gradient_array(BIG, np.float32) for _ in range(3))
    del a, b
    assert len(cache) == 2  # 8 MiB and a little
    del c
    assert len(cache) == 2  # the oldest went
    huge = _resources.gradient_array((3, *BIG), np.float32)  # 12 MiB: no block fits
    assert cache and all(not np.shares_memory(huge, blk) for blk in cache)
    del huge  # more than the limit on its own: freed
    assert sum(blk.nbytes for blk in cache) <= 10 * 2**20
    softmaxce.set_gradient_cache(0)
    assert cache == []
    a = _resources.gradient_array(BIG, np.float32)
    del a
    assert cache == []


def test_a_block_serves_at_most_twice_its_need(cache):
    a = _resources.gradient_array((4, *BIG), np.float32)  # 16 MiB
    del a
    b = _resources.gradient_array(BIG, np.float32)  # 4 MiB: the 16 MiB block would waste 12
    assert len(cache) == 1 and not np.shares_memory(b, cache[0])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_cache_limit(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        softmaxce.set_gradient_cache(bad)


def test_front_ends_reuse_the_gradient_memory(cache, rng):
    """Each step's gradient, once dropped, is the next step's memory; the results do not depend on what
    the memory held (ignored rows too)."""
    from reference import reference_cross_entropy

    z = rng.standard_normal((2048, 600)).astype(np.float32)  # 4.7 MiB gradient
    t = rng.integers(0, 600, 2048)
    t[::7] = -100
    _, g = softmaxce.cross_entropy_and_grad(z, t)
    address = g.ctypes.data
    del g
    z2 = rng.standard_normal(z.shape).astype(np.float32)
    loss2, g2 = softmaxce.cross_entropy_and_grad(z2, t)
    assert g2.ctypes.data == address
    ref_loss, ref_grad = reference_cross_entropy(z2.astype(np.float64), t, ignore_index=-100)
    np.testing.assert_allclose(g2, ref_grad, rtol=1e-5, atol=1e-7)
    assert (g2[::7] == 0).all()
    torch = pytest.importorskip("torch")
    import softmaxce.torch as sce_torch

    del g2
    x = torch.from_numpy(z.copy()).requires_grad_(True)
    sce_torch.cross_entropy(x, torch.from_numpy(t)).backward()
    assert x.grad.data_ptr() == address
    np.testing.assert_allclose(x.grad.numpy(), softmaxce.cross_entropy_and_grad(z, t)[1], rtol=1e-6, atol=1e-9)
