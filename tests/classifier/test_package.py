"""The classifier package's surface: its names, the lazy top-level names, the missing-extra error."""

from __future__ import annotations

import subprocess
import sys

import softmaxce
import softmaxce.classifier


def test_public_names_and_lazy_top_level_names():
    assert sorted(softmaxce.classifier.__all__) == ["ModelFileError", "SoftmaxClassifier"]
    assert softmaxce.SoftmaxClassifier is softmaxce.classifier.SoftmaxClassifier
    assert softmaxce.ModelFileError is softmaxce.classifier.ModelFileError
    from softmaxce.classifier._atomic import atomic_path  # the CLI's import path

    assert callable(atomic_path)


def test_without_sklearn_the_import_names_the_extra():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import softmaxce\n"
        "try:\n"
        "    import softmaxce.classifier\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ImportError ") and "softmaxce[sklearn]" in out, out
