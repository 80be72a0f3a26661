"""Bad requests to `vllm serve` with vispec get a 4xx with a message, and neither take the
server down nor change the answers to the good requests sent alongside."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prompts import conversations
from test_served import SERVE_ARGS, chat
from vllm_runs import vispec_config

from vllm_vispec.serve_process import VllmServer
from vllm_vispec.tiny import tiny_target
from vllm_vispec.tiny.images import image_part, shapes_image


def image_url(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(*parts) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "Describe it."}]}]


BAD = {
    "corrupt base64": ask(image_url("data:image/png;base64,iVBORw0K!!!not-base64")),
    "empty base64": ask(image_url("data:image/png;base64,")),
    "not an image": ask(image_url("data:image/png;base64,"
                                  + base64.b64encode(b"plain text, not pixels").decode())),
    "too many images": ask(*[image_part(shapes_image(i)) for i in range(3)]),
    "prompt over max_model_len": [{"role": "user", "content": "red circle " * 1500}],
    "unknown content type": [{"role": "user", "content": [
        {"type": "hologram", "hologram": "x"}]}],
    "image_url not an object": [{"role": "user", "content": [
        {"type": "image_url", "image_url": 42}]}],
}


def post_raw(server: VllmServer, data: bytes, content_type: str) -> tuple[int, str]:
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=data,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def send(server: VllmServer, messages) -> tuple[int, str]:
    body = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 8}
    return post_raw(server, json.dumps(body).encode(), "application/json")


def test_bad_requests_get_4xx_and_do_not_disturb_others(baseline, tmp_path):
    expected = baseline("llava")
    convs = conversations()
    args = ["--speculative-config", json.dumps(vispec_config("llava", 3)), *SERVE_ARGS]
    with VllmServer(str(tiny_target("llava")), args,
                    log_path=tmp_path / "server.log") as server:
        with ThreadPoolExecutor(max_workers=8) as pool:
            good = {name: pool.submit(chat, server, conv) for name, conv in convs.items()}
            bad = {name: pool.submit(send, server, msgs) for name, msgs in BAD.items()}
            bad["wrong content type"] = pool.submit(
                post_raw, server, b"model=tiny&messages=hi", "application/x-www-form-urlencoded")
            bad["malformed json"] = pool.submit(post_raw, server, b'{"model": "tiny", ',
                                                "application/json")
            good = {name: f.result() for name, f in good.items()}
            bad = {name: f.result() for name, f in bad.items()}
        after = chat(server, convs["one_image"])  # the server is still up and right

    for name, (status, body) in bad.items():
        print(f"{name}: HTTP {status} {body[:160]}")
        assert 400 <= status < 500, f"{name}: HTTP {status} {body[:300]}"
        assert len(body) > 20, f"{name}: no message"  # an error that says something
    for name, reply in good.items():
        assert reply["choices"][0]["token_ids"] == expected[name][0], f"{name} differs"
    assert after["choices"][0]["token_ids"] == expected["one_image"][0]
