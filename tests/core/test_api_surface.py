"""The public surface: every name in softmaxce.__all__ exists, is documented and is where users look."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

import softmaxce

PUBLIC = sorted(softmaxce.__all__)
OPTIONS = {"weight", "ignore_index", "reduction", "label_smoothing", "z_loss", "softcap", "grad_output", "out"}


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_exists_and_is_documented(name):
    obj = getattr(softmaxce, name)  # AttributeError if __all__ lists a missing name
    if name == "__version__":
        assert isinstance(obj, str) and obj
        return
    if inspect.isfunction(obj) or inspect.isclass(obj):
        doc = inspect.getdoc(obj)
        assert doc and len(doc.strip()) > 20, f"softmaxce.{name} has no real docstring"


@pytest.mark.parametrize("name", [n for n in PUBLIC if inspect.isfunction(getattr(softmaxce, n, None))])
def test_public_functions_take_options_by_keyword_only(name):
    """Arrays positional, options keyword-only (STYLE.md): declared in the signature, or in the one
    TypedDict of a `**options: Unpack[LossOptions]` (PEP 692), never an untyped catch-all."""
    params = inspect.signature(getattr(softmaxce, name)).parameters.values()
    for p in params:
        if p.name in OPTIONS:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}({p.name}=...) must be keyword-only"
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            declared = {"Unpack[LossOptions]": softmaxce.LossOptions, "Unpack[LinearOptions]": softmaxce.LinearOptions}
            assert p.annotation in declared, f"{name}(**{p.name}) is not a declared TypedDict"
            assert OPTIONS - {"grad_output", "out"} <= set(declared[p.annotation].__optional_keys__)


LOSSES = {
    "cross_entropy": lambda **kw: softmaxce.cross_entropy(np.zeros((2, 3)), [0, 1], **kw),
    "cross_entropy_and_grad": lambda **kw: softmaxce.cross_entropy_and_grad(np.zeros((2, 3)), [0, 1], **kw),
    "cross_entropy_with_stats": lambda **kw: softmaxce.cross_entropy_with_stats(np.zeros((2, 3)), [0, 1], **kw),
    "linear_cross_entropy": lambda **kw: softmaxce.linear_cross_entropy(np.eye(2), np.eye(3, 2), [0, 1], **kw),
    "linear_cross_entropy_and_grad": lambda **kw: softmaxce.linear_cross_entropy_and_grad(
        np.eye(2), np.eye(3, 2), [0, 1], **kw
    ),
    "linear_cross_entropy_with_stats": lambda **kw: softmaxce.linear_cross_entropy_with_stats(
        np.eye(2), np.eye(3, 2), [0, 1], **kw
    ),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_unknown_option_keyword_raises_naming_it(name):
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword argument 'label_smothing'$"):
        LOSSES[name](label_smothing=0.1)
    with pytest.raises(TypeError, match="softcap must be a real number"):  # a declared one is checked
        LOSSES[name](softcap="1")


def test_the_option_defaults_are_pytorchs_on_every_function(rng):
    """Called without options, every loss function gives PyTorch's default: the mean over the
    positions whose target is not -100, with no smoothing, z-loss or cap."""
    logits = rng.standard_normal((6, 5))
    target = np.array([0, 4, -100, 2, 2, 1])
    kept = target != -100
    log_a = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -log_a[np.flatnonzero(kept), target[kept]].mean()
    losses = {
        "cross_entropy": softmaxce.cross_entropy(logits, target),
        "cross_entropy_and_grad": softmaxce.cross_entropy_and_grad(logits, target)[0],
        "cross_entropy_with_stats": softmaxce.cross_entropy_with_stats(logits, target).loss,
        "linear_cross_entropy": softmaxce.linear_cross_entropy(logits, np.eye(5), target),
        "linear_cross_entropy_and_grad": softmaxce.linear_cross_entropy_and_grad(logits, np.eye(5), target)[0],
        "linear_cross_entropy_with_stats": softmaxce.linear_cross_entropy_with_stats(logits, np.eye(5), target).loss,
        "CEOptions()": softmaxce.cross_entropy(logits, target, **vars(softmaxce.CEOptions())),
    }
    for name, loss in losses.items():
        np.testing.assert_allclose(loss, expected, rtol=1e-12, err_msg=name)


_IMPORT_CHECK = """
import sys
import softmaxce
heavy = ["torch", "sklearn", "matplotlib", "click", "tqdm", "pandas", "pyarrow", "transformers"]
print(",".join(m for m in heavy if m in sys.modules))
"""


def test_import_softmaxce_loads_no_optional_dependency():
    out = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import softmaxce loaded {out.stdout.strip()}"


_MISSING_EXTRA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ImportError("No module named " + repr(name))
sys.meta_path.insert(0, Block())
import softmaxce
try:
    import {module}
except ImportError as e:
    print("ImportError:", e)
"""


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("softmaxce.torch", "torch", "torch"),
        ("softmaxce.classifier", "sklearn", "sklearn"),
        ("softmaxce.cli", "click", "cli"),
        ("softmaxce.cli", "pyarrow", "cli"),
        ("softmaxce.transformers", "transformers", "transformers"),
    ],
    ids=["torch", "classifier", "cli-click", "cli-pyarrow", "transformers"],
)
def test_a_missing_extra_raises_one_import_error_naming_it(module, blocked, extra):
    code = _MISSING_EXTRA.format(blocked=blocked, module=module)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ImportError:"), out.stdout
    assert f"softmaxce[{extra}]" in out.stdout and blocked in out.stdout


def test_classifier_is_reachable_from_the_package_without_importing_it_eagerly():
    assert "SoftmaxClassifier" in softmaxce.__all__ and "SoftmaxClassifier" in dir(softmaxce)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        softmaxce.nonexistent  # noqa: B018


_PUBLIC_MODULES = [
    "softmaxce",
    "softmaxce.torch",
    "softmaxce.torch.distributed",
    "softmaxce.classifier",
    "softmaxce.cli",
    "softmaxce.transformers",
]


@pytest.mark.parametrize("module_name", _PUBLIC_MODULES)
def test_every_public_function_and_method_has_a_return_annotation(module_name):
    import importlib

    module = importlib.import_module(module_name)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            funcs = [(name, obj)]
        elif inspect.isclass(obj):  # methods the class itself defines (not those it inherits)
            funcs = [
                (f"{name}.{attr}", value)
                for attr, value in vars(obj).items()
                if inspect.isfunction(value) and (not attr.startswith("_") or attr in ("__init__", "forward"))
            ]
        else:
            continue
        missing += [qual for qual, f in funcs if inspect.signature(f).return_annotation is inspect.Signature.empty]
    assert missing == [], f"{module_name}: no return annotation on {missing}"
