"""Validation of the vispec speculative config."""

from __future__ import annotations

import pytest

from vllm_vispec.config import check_model_runner, check_parallelism, is_vispec, validate_options


def test_is_vispec():
    assert is_vispec({"method": "vispec"})
    assert not is_vispec({"method": "eagle"}) and not is_vispec(None)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"unknown vispec option\(s\) \['num_q_tokens'\]"):
        validate_options({"method": "vispec", "model": "x", "num_speculative_tokens": 2,
                          "num_q_tokens": 3})


@pytest.mark.parametrize("n", [None, 0, -1, "3", True])
def test_num_speculative_tokens_must_be_a_positive_int(n):
    spec = {"method": "vispec", "model": "x"}
    if n is not None:
        spec["num_speculative_tokens"] = n
    with pytest.raises(ValueError, match="num_speculative_tokens.*positive integer"):
        validate_options(spec)


def test_parallel_drafting_is_refused():
    with pytest.raises(ValueError, match="does not support 'parallel_drafting'"):
        validate_options({"method": "vispec", "model": "x", "num_speculative_tokens": 2,
                          "parallel_drafting": True})


def test_vllm_options_pass_through():
    validate_options({"method": "vispec", "model": "x", "num_speculative_tokens": 2,
                      "draft_tensor_parallel_size": 1, "max_model_len": 512})


def test_model_runner_v2_is_refused(monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match="classic \\(V1\\) model runner only"):
        check_model_runner()
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    check_model_runner()


def test_trees_are_checked_and_run_on_cpu_and_cuda_only(monkeypatch):
    spec = {"method": "vispec", "model": "x", "num_speculative_tokens": 2}
    validate_options({**spec, "tree": {"depth": 2, "top_k": 4, "total_tokens": 11}})
    with pytest.raises(ValueError, match="unknown vispec \"tree\" option"):
        validate_options({**spec, "tree": {"width": 4}})
    from vllm.platforms import current_platform
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    monkeypatch.setattr(type(current_platform), "is_cuda", lambda self: True)
    validate_options({**spec, "tree": {"depth": 3}})  # CUDA: the backends are checked later
    monkeypatch.setattr(type(current_platform), "is_cuda", lambda self: False)
    with pytest.raises(ValueError, match="CPU and CUDA builds only"):
        validate_options({**spec, "tree": {"depth": 3}})


def test_pipeline_parallelism_is_refused_tensor_parallelism_is_not():
    from types import SimpleNamespace
    check_parallelism(SimpleNamespace(pipeline_parallel_size=1, tensor_parallel_size=8))
    with pytest.raises(ValueError, match="does not support pipeline parallelism"):
        check_parallelism(SimpleNamespace(pipeline_parallel_size=2, tensor_parallel_size=1))
