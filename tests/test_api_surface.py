"""The public surface: every name in softmaxce.__all__ exists, is documented and is where users look."""

from __future__ import annotations

import inspect

import pytest

import softmaxce

PUBLIC = sorted(softmaxce.__all__)
OPTIONS = {"weight", "ignore_index", "reduction", "label_smoothing", "z_loss", "softcap", "grad_output", "out"}
CORE = [
    "CEOptions",
    "CrossEntropyResult",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_with_stats",
    "get_num_threads",
    "log_softmax",
    "set_num_threads",
    "softmax",
]


def test_all_has_no_duplicates():
    assert len(set(softmaxce.__all__)) == len(softmaxce.__all__)


@pytest.mark.parametrize("name", CORE)
def test_core_names_are_public(name):
    assert name in softmaxce.__all__


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
    """Arrays positional, options keyword-only (STYLE.md); no **kwargs catch-all."""
    params = inspect.signature(getattr(softmaxce, name)).parameters.values()
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    for p in params:
        if p.name in OPTIONS:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}({p.name}=...) must be keyword-only"


def test_cross_entropy_functions_share_the_option_defaults():
    defaults = dict(weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None)
    for fn in (softmaxce.cross_entropy, softmaxce.cross_entropy_and_grad, softmaxce.cross_entropy_with_stats):
        params = inspect.signature(fn).parameters
        for key, value in defaults.items():
            assert params[key].default == value, f"{fn.__name__}({key}=) default"


def test_ceoptions_defaults_match_the_functions():
    opts = softmaxce.CEOptions()
    assert (opts.ignore_index, opts.reduction, opts.label_smoothing, opts.z_loss, opts.softcap) == (
        -100,
        "mean",
        0.0,
        0.0,
        None,
    )
