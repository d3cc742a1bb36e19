"""`softmaxce demo` as a user runs it, in a real process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from _cli_helpers import assert_png


def test_demo_end_to_end_in_a_real_process(tmp_path):
    """`softmaxce demo` as a user runs it. It must take under 60 s on the 2-core machine; the test bounds
    the child's CPU time (threads included), which does not grow when other jobs share the machine."""
    before = os.times()
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "softmaxce", "demo", "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    print(f"softmaxce demo: {wall:.1f} s wall, {cpu:.1f} s CPU")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "-ln 0.6 = 0.5108" in text
    assert "a - y = [0.1000, -0.4000, 0.3000]" in text
    assert "finite differences     = [0.1000, -0.4000, 0.3000]" in text
    assert re.search(r"epoch +30/30 +loss \S+ +val_loss \S+ +val_acc \S+", text)
    acc = float(re.search(r"test accuracy: \S*?(\d\.\d{4})", text).group(1))
    assert acc >= 0.97
    assert re.search(r"max \|dL/dz - finite differences\| += \d\.\de-(1[0-9]|9)", text)
    assert re.search(r"512 MiB of logits: [\d.]+ ms .* GB/s", text)
    sections = ", ".join(rf"{i}: [\d.]+ s" for i in range(1, 6))
    assert re.search(rf"^done in [\d.]+ s \({sections}\)$", text, re.M)
    for png in ("loss_curve.png", "confusion_matrix.png"):
        path = tmp_path / "o" / png
        assert str(path) in text or os.path.join("o", png) in text
        assert_png(path)
    assert cpu < 60, f"demo used {cpu:.1f} s of CPU"


def test_demo_quiet_prints_only_the_plot_paths(tmp_path):
    from _cli_helpers import run

    result = run("demo", "--out-dir", tmp_path, "--epochs", "1", "--speed-size", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"   loss curve:       {tmp_path / 'loss_curve.png'}",
        f"   confusion matrix: {tmp_path / 'confusion_matrix.png'}",
    ]
    assert_png(tmp_path / "confusion_matrix.png")
