"""The official OpenAI Python SDK against a running llm-sidecar: chat (JSON and streaming),
the Responses API (JSON and streaming), completions, embeddings, models, and an error. Exits non-zero on the first mismatch.

Usage: python openai_sdk_smoke.py http://127.0.0.1:PORT/v1
"""
import base64
import struct
import sys

import openai
from openai import OpenAI

base_url = sys.argv[1]
client = OpenAI(base_url=base_url, api_key="sk-app-key", max_retries=0, timeout=20)

chat = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello sdk"}])
assert chat.choices[0].message.content == "Mock answer to: hello sdk", chat
assert chat.usage.prompt_tokens == 3, chat.usage

raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
assert raw.headers["x-llm-sidecar-route"] == "auto", dict(raw.headers)

pieces = []
usage_chunks = 0
for chunk in client.chat.completions.create(
    model="auto", messages=[{"role": "user", "content": "stream this please"}], stream=True
):
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
    elif chunk.usage is not None:
        usage_chunks += 1
assert "".join(pieces) == "Mock answer to: stream this please", pieces
assert usage_chunks == 0, "the app did not ask for usage, so it must not see the sidecar's usage chunk"

last = None
for chunk in client.chat.completions.create(
    model="auto",
    messages=[{"role": "user", "content": "with usage"}],
    stream=True,
    stream_options={"include_usage": True},
):
    last = chunk
assert last is not None and last.usage is not None and last.usage.completion_tokens == 5, last

resp = client.responses.create(model="auto", input="hello responses", instructions="be brief")
assert resp.output_text == "Mock answer to: hello responses", resp
assert resp.usage.input_tokens == 6 and resp.usage.output_tokens == 5, resp.usage
raw = client.responses.with_raw_response.create(model="auto", input="which model")
assert raw.headers["x-llm-sidecar-model"] == "chat-model", dict(raw.headers)

deltas = []
completed = None
for event in client.responses.create(model="auto", input="stream the response", stream=True):
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    elif event.type == "response.completed":
        completed = event.response
assert "".join(deltas) == "Mock answer to: stream the response", deltas
assert completed is not None and completed.usage.output_tokens == 6, completed

with client.responses.stream(model="auto", input="the stream helper") as stream:
    final = stream.get_final_response()
assert final.output_text == "Mock answer to: the stream helper", final

comp = client.completions.create(model="chat-model", prompt="finish me")
assert comp.choices[0].text == "Mock completion of: finish me", comp

emb = client.embeddings.create(model="embed-model", input=["one", "two"])
assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8, emb
# Whatever the SDK asked for by default (base64, decoded by the SDK), the vector is real.
assert abs(sum(x * x for x in emb.data[0].embedding) - 1) < 1e-4, emb
flt = client.embeddings.create(model="embed-model", input=["one"], encoding_format="float").data[0].embedding
raw = client.embeddings.create(model="embed-model", input=["one"], encoding_format="base64").data[0].embedding
dec = struct.unpack("<8f", base64.b64decode(raw))
assert all(abs(a - b) < 1e-6 for a, b in zip(flt, dec)), (flt, dec)

ids = sorted(m.id for m in client.models.list())
assert ids == ["auto", "chat-model", "embed-model"], ids

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e.body

print("openai-sdk smoke: all checks passed")
