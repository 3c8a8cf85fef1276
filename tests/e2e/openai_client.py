"""The official `openai` client against a live `minimind serve` (base URL and model id as arguments)."""
import json
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

# Tool calling round trip: a forced call (named or required) is decoded under the tool's parameters,
# so even this tiny model answers with a valid call; its result goes back as a tool message and the
# model answers. With tool_choice auto whatever it writes is a call or content, never an error.
tools = [{"type": "function", "function": {"name": "calc", "description": "arithmetic",
          "parameters": {"type": "object", "properties": {"expr": {"type": "string", "maxLength": 8}},
                         "required": ["expr"], "additionalProperties": False}}}]
question = [{"role": "user", "content": "1+2?"}]
for choice in ({"type": "function", "function": {"name": "calc"}}, "required"):
    t = client.chat.completions.create(model=model, messages=question, tools=tools, tool_choice=choice, max_tokens=80, temperature=0)
    assert t.choices[0].finish_reason == "tool_calls", t
    call = t.choices[0].message.tool_calls[0]
    assert call.function.name == "calc" and isinstance(json.loads(call.function.arguments)["expr"], str), call
    streamed = list(client.chat.completions.create(model=model, messages=question, tools=tools, tool_choice=choice,
                                                   max_tokens=80, temperature=0, stream=True))
    deltas = [tc for p in streamed for c in p.choices for tc in (c.delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "calc" and streamed[-1].choices[0].finish_reason == "tool_calls", streamed
    history = question + [t.choices[0].message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "3"}]
    final = client.chat.completions.create(model=model, messages=history, tools=tools, max_tokens=8, temperature=0)
    m = final.choices[0].message
    assert (m.tool_calls is not None) == (final.choices[0].finish_reason == "tool_calls"), final
    assert m.tool_calls is not None or isinstance(m.content, str), final

# Structured output: the answer parses and validates against the schema, whatever the model.
schema = {"type": "object", "additionalProperties": False, "required": ["answer", "n"],
          "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}}}
s = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "yes or no?"}], max_tokens=60, temperature=1.0, seed=4,
    response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}},
)
value = json.loads(s.choices[0].message.content)
assert value["answer"] in ("yes", "no") and 0 <= value["n"] <= 9 and len(value) == 2, value

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model accepted")
except Exception as e:  # openai.NotFoundError
    assert getattr(e, "status_code", None) == 404, e

print("openai client: models.list, chat (non-stream), chat (stream + usage), n=2 (whole and streamed), logprobs, tool-calling round trip, json_schema, 404 error — OK")
