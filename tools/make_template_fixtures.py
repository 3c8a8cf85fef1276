"""Writes tests/fixtures/templates/v3.json: minimind-3's chat template rendered by transformers'
`apply_chat_template` (the reference implementation) for plain chats, reasoning_content, tools,
assistant tool calls, tool results and the thinking switch. tests/suite/template.rs renders the same
cases with minimind's template engine and compares byte for byte.

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install transformers jinja2
    /tmp/tf/bin/python tools/make_template_fixtures.py
"""
import json
import pathlib

from transformers import AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "今天的天气",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "a + b",
                                      "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                                                      "b": {"type": "number"}}}}},
]
CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]

CASES = [
    ("plain", [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}], None, False, {}),
    ("system_multi_turn", [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4"}], None, False, {}),
    ("reasoning_content", [{"role": "user", "content": "1+1=?"},
                           {"role": "assistant", "content": "等于2。", "reasoning_content": "一加一。"}], None, False, {}),
    ("think_in_content", [{"role": "user", "content": "why?"},
                          {"role": "assistant", "content": "<think>\nbecause\n</think>\n\nSo."}], None, False, {}),
    ("tools_and_calls", [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "北京天气？"},
                         {"role": "assistant", "content": "", "tool_calls": CALL},
                         {"role": "tool", "content": "{\"temp\": 21}"},
                         {"role": "assistant", "content": "北京 21 度。"}], TOOLS, False, {}),
    ("two_tool_results", [{"role": "user", "content": "add"},
                          {"role": "assistant", "content": "ok", "tool_calls": CALL + CALL},
                          {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}], TOOLS, True, {}),
    ("generation_default", [{"role": "user", "content": "你好"}], None, True, {}),
    ("generation_open_thinking", [{"role": "user", "content": "你好"}], None, True, {"open_thinking": True}),
    ("generation_closed_thinking", [{"role": "user", "content": "你好"}], None, True, {"open_thinking": False}),
]


def main():
    tok = AutoTokenizer.from_pretrained(str(ROOT / "assets/tokenizers/v3"))
    out = []
    for name, messages, tools, gen, kwargs in CASES:
        text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen, **kwargs)
        out.append({"name": name, "messages": messages, "tools": tools, "add_generation_prompt": gen,
                    "kwargs": kwargs, "expected": text})
    path = ROOT / "tests/fixtures/templates/v3.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(out)} cases written to {path}")


if __name__ == "__main__":
    main()
