"""Bad configurations fail at start-up with a message that names the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from vllm_runs import engine_args, vispec_config

from vllm_vispec.model.layout import DraftDims
from vllm_vispec.serve_process import VllmServer
from vllm_vispec.tiny import tiny_target
from vllm_vispec.model.layout import published_config
from vllm_vispec.tiny.drafts import draft_weights


def make_llm(spec: dict):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM
    return LLM(model=str(tiny_target("llava")), dtype="float32", max_model_len=512,
               enforce_eager=True, speculative_config=spec)


def write_draft(path, **overrides):
    dims = DraftDims(**{**dict(hidden_size=256, num_heads=4, num_kv_heads=4, head_dim=64,
                               intermediate_size=512, vocab_size=448, num_q=2,
                               qkv_bias=False, fc_bias=True, rms_norm_eps=1e-5,
                               rope_theta=1e4, max_position_embeddings=2048), **overrides})
    path.mkdir()
    (path / "config.json").write_text(json.dumps(published_config(dims, {})))
    embed = torch.zeros(dims.vocab_size, dims.hidden_size)
    save_file(draft_weights(dims, embed, seed=0), path / "model.safetensors")
    return path


def test_missing_draft_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="ViSpec draft checkpoint not found.*nope"):
        make_llm({"method": "vispec", "model": str(tmp_path / "nope"),
                  "num_speculative_tokens": 2})


def test_draft_with_wrong_hidden_size(tmp_path):
    draft = write_draft(tmp_path / "d", hidden_size=128, head_dim=32, intermediate_size=256)
    with pytest.raises(ValueError, match="hidden size 128 != target's 256"):
        make_llm({"method": "vispec", "model": str(draft), "num_speculative_tokens": 2})


def test_draft_with_wrong_vocabulary(tmp_path):
    draft = write_draft(tmp_path / "d", vocab_size=500)
    with pytest.raises(ValueError, match="vocabulary size 500 != target's 448"):
        make_llm({"method": "vispec", "model": str(draft), "num_speculative_tokens": 2})


def test_unknown_vispec_option():
    with pytest.raises(ValueError, match=r"unknown vispec option\(s\) \['tree_depth'\]"):
        make_llm(vispec_config("llava", 2, tree_depth=3))


def test_vispec_selects_the_classic_model_runner():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm.engine.arg_utils import EngineArgs
    config = EngineArgs(model=str(tiny_target("llava")), dtype="float32", max_model_len=512,
                        speculative_config=vispec_config("llava", 2)).create_engine_config()
    assert config.speculative_config.method == "eagle"
    assert "speculative method 'vispec'" in config._get_v2_model_runner_unsupported_features()
    assert config.use_v2_model_runner is False


def test_wrong_vllm_version_refuses_vispec_and_leaves_other_engines_alone():
    # The tests' engine settings (small KV cache, few sequences), as every other engine here.
    plain = engine_args("llava")
    spec = engine_args("llava", vispec_config("llava", 2))
    code = ("import vllm; vllm.__version__ = '0.33.0'\n"
            "from vllm import LLM, SamplingParams\n"
            f"llm = LLM(**{plain!r})\n"
            "out = llm.generate('a b c', SamplingParams(max_tokens=3, temperature=0))\n"
            "print('PLAIN TOKENS', len(out[0].outputs[0].token_ids), flush=True)\n"
            "del llm\n"
            f"LLM(**{spec!r})\n")
    # faulthandler: a crash of the engine prints where it happened instead of nothing.
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert "PLAIN TOKENS 3" in proc.stdout, (proc.returncode, proc.stderr[-3000:])
    assert proc.returncode != 0
    assert "RuntimeError: vllm-vispec supports vLLM 0.32.x only, but vLLM 0.33.0 is " \
           "installed" in proc.stderr


def test_settings_that_force_model_runner_v2_refuse_vispec(monkeypatch):
    """Watermarking makes vLLM use Model Runner V2 whatever its unsupported-feature list
    says; the vispec draft would get no step inputs there (it would propose from zeros)."""
    import vllm.config.vllm
    # The CPU build has no Triton backend, which vLLM checks first for V2.
    monkeypatch.setattr(vllm.config.vllm, "HAS_TRITON", True)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm.engine.arg_utils import EngineArgs
    args = EngineArgs(model=str(tiny_target("llava")), dtype="float32", max_model_len=512,
                      speculative_config={**vispec_config("llava", 2),
                                          "draft_sample_method": "probabilistic"},
                      watermark_config={"key": 1234, "allow_target_only_watermarking": True})
    with pytest.raises(ValueError, match=r"vispec runs on vLLM's classic \(V1\) model runner "
                                         r"only, but watermarking .* requires Model Runner V2"):
        args.create_engine_config()


def test_served_bad_draft_exits_with_the_reason(tmp_path):
    spec = {"method": "vispec", "model": str(tmp_path / "missing"),
            "num_speculative_tokens": 2}
    server = VllmServer(str(tiny_target("llava")), ["--speculative-config", json.dumps(spec),
                                                    "--enforce-eager"],
                        log_path=tmp_path / "log.txt", startup_timeout=300)
    with pytest.raises(RuntimeError, match="exited"):
        server.__enter__()
    assert "ViSpec draft checkpoint not found" in server.log_tail(200)
