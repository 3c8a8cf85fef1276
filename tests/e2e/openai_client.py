"""The official `openai` client against a live `minimind serve` (base URL and model id as arguments)."""
import sys

from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key="none")

ids = [m.id for m in client.models.list()]
assert model in ids, ids

r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "你好"}], max_tokens=5, temperature=0
)
assert r.object == "chat.completion" and r.choices[0].message.role == "assistant", r
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage

text, usage, finish = "", None, None
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "你好"}], max_tokens=5, temperature=0,
    stream=True, stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
assert text == r.choices[0].message.content, (text, r.choices[0].message.content)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
assert finish == r.choices[0].finish_reason, finish

two = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "你好"}], max_tokens=5, temperature=1.0, seed=3, n=2,
)
assert [c.index for c in two.choices] == [0, 1], two
streamed = ["", ""]
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "你好"}], max_tokens=5, temperature=1.0, seed=3, n=2,
    stream=True,
):
    for choice in chunk.choices:
        streamed[choice.index] += choice.delta.content or ""
assert streamed == [c.message.content for c in two.choices], (streamed, two)

lp = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "你好"}], max_tokens=4, temperature=0,
    logprobs=True, top_logprobs=2,
)
entries = lp.choices[0].logprobs.content
assert len(entries) == lp.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in entries), lp
assert all(e.logprob <= 0 and e.token == e.top_logprobs[0].token for e in entries), entries

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model accepted")
except Exception as e:  # openai.NotFoundError
    assert getattr(e, "status_code", None) == 404, e

print("openai client: models.list, chat (non-stream), chat (stream + usage), n=2 (whole and streamed), logprobs, 404 error — OK")
