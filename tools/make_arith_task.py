#!/usr/bin/env python3
"""Writes the bundled verifiable task: small arithmetic word problems (Chinese and English) with
their answers, for fine-tuning and then reinforcement learning with a ground-truth reward.

    python3 tools/make_arith_task.py [OUT_DIR]        # default: data/

- arith_sft.jsonl   2,000 SFT rows: the question, then the worked answer ("12 + 7 = 19，答案是 19。")
- arith_rl.jsonl    2,500 RLAIF rows: the question, an empty assistant turn, and "gt" (the number) —
                      the 2,000 SFT questions, then 500 questions of their own
- arith_eval.jsonl    200 RLAIF rows for measuring accuracy, no question shared with the two above
- arith_mc/           the eval questions as a multiple-choice benchmark in C-Eval's layout:
                      val/arith_{zh,en}_val.csv (four choices, the answer's letter balanced) and
                      dev/arith_{zh,en}_dev.csv (five few-shot examples each, from the RL rows)

Standard library only; the seed fixes every file.
"""
import csv
import json
import random
import sys
from pathlib import Path

ZH = {
    "+": ["{a} 加 {b} 等于多少？", "小明有 {a} 个苹果，又买了 {b} 个，现在一共有几个？", "书架上有 {a} 本书，又放上 {b} 本，现在有几本？"],
    "-": ["{a} 减 {b} 等于多少？", "小红有 {a} 颗糖，吃掉了 {b} 颗，还剩几颗？", "停车场有 {a} 辆车，开走了 {b} 辆，还剩几辆？"],
    "*": ["{a} 乘 {b} 等于多少？", "每盒有 {a} 支笔，{b} 盒一共有几支？", "一排坐 {a} 个人，{b} 排一共坐几个人？"],
}
EN = {
    "+": ["What is {a} plus {b}?", "Tom has {a} apples and buys {b} more. How many apples does he have now?"],
    "-": ["What is {a} minus {b}?", "A shelf holds {a} books; {b} are taken away. How many are left?"],
    "*": ["What is {a} times {b}?", "Each box holds {a} pens. How many pens are in {b} boxes?"],
}


def problem(rng):
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if op == "-" and b > a:
            a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    zh = rng.random() < 0.5
    question = rng.choice((ZH if zh else EN)[op]).format(a=a, b=b)
    sign = {"+": "+", "-": "-", "*": "×"}[op]
    answer = f"{a} {sign} {b} = {value}，答案是 {value}。" if zh else f"{a} {sign} {b} = {value}. The answer is {value}."
    return question, answer, value


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    rng = random.Random(2026)
    seen, rows = set(), []
    while len(rows) < 2700:
        q, a, v = problem(rng)
        if q not in seen:
            seen.add(q)
            rows.append((q, a, v))
    sft, rl, ev = rows[:2000], rows[2000:2500], rows[2500:]
    write = lambda name, items: (out / name).write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    write("arith_sft.jsonl", ({"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a, _ in sft))
    rlaif = lambda part: ({"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": ""}], "gt": str(v)} for q, _, v in part)
    # RL practises the fine-tuning questions and 500 new ones: a small model answers its SFT questions
    # right only some of the time, and the ground-truth reward sharpens what it half knows.
    write("arith_rl.jsonl", rlaif(sft + rl))
    write("arith_eval.jsonl", rlaif(ev))
    write_choice_benchmark(out / "arith_mc", rl, ev)


def distractors(rng, value):
    """Three wrong answers a careless solver might give: off by one, by ten, or a near number."""
    wrong = []
    for candidate in [value + 1, value - 1, value + 10, value - 10, value + 2, value * 2, value + 11]:
        if candidate >= 0 and candidate != value and candidate not in wrong:
            wrong.append(candidate)
    rng.shuffle(wrong)
    return wrong[:3]


def write_choice_benchmark(root, dev_rows, val_rows):
    rng = random.Random(7)
    for split, rows, limit in (("dev", dev_rows, 5), ("val", val_rows, None)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for lang in ("zh", "en"):
            picked = [r for r in rows if (ord(r[0][0]) > 127) == (lang == "zh")][:limit]
            with open(root / split / f"arith_{lang}_{split}.csv", "w", encoding="utf-8", newline="") as f:
                out = csv.writer(f, lineterminator="\n")
                out.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                for i, (q, _, v) in enumerate(picked):
                    slot = i % 4
                    choices = distractors(rng, v)
                    choices.insert(slot, v)
                    out.writerow([i, q, *choices, "ABCD"[slot]])


if __name__ == "__main__":
    main()
