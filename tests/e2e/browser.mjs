// Drives the web chat page in headless Chromium: sends a message, waits for the streamed answer;
// the thinking switch; a demo tool call shown, run and answered.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [url, shot, votes] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
await page.goto(url);
await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0);
await page.fill("#max_tokens", "12");
await page.$eval("#temperature", (e) => { e.value = "0"; e.dispatchEvent(new Event("input")); });
await page.fill("#input", "你好");
await page.click("#send");
await page.waitForSelector(".msg.assistant");
// The answer streams in; the send button comes back when the stream ends.
await page.waitForFunction(() => !document.querySelector("#send").disabled, null, { timeout: 60000 });
const answer = await page.textContent(".msg.assistant");
const user = await page.textContent(".msg.user");
if (user !== "你好") throw new Error(`user bubble: ${user}`);
if (answer.includes("[error")) throw new Error(`assistant bubble: ${answer}`);
if (answer.length === 0) throw new Error("the assistant bubble stayed empty");
// The page shows exactly what the API answers for the same greedy request.
const model = await page.$eval("#model", (e) => e.value);
const res = await fetch(new URL("/v1/chat/completions", url), {
  method: "POST", headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ model, messages: [{ role: "user", content: "你好" }], temperature: 0, top_p: 0.85, max_tokens: 12 }),
});
const expected = (await res.json()).choices[0].message.content;
if (answer !== expected) throw new Error(`page shows ${JSON.stringify(answer)}, API answers ${JSON.stringify(expected)}`);
// The thinking switch sends minimind-3's template switch with the request.
await page.selectOption("#thinking", "off");
const sent = page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions") && r.method() === "POST");
await page.fill("#input", "再见");
await page.click("#send");
const body = JSON.parse((await sent).postData());
if (body.chat_template_kwargs?.enable_thinking !== false) throw new Error(`thinking switch not sent: ${JSON.stringify(body)}`);
await page.waitForFunction(() => !document.querySelector("#send").disabled, null, { timeout: 60000 });
// Demo tools: a required call is shown, run on the server's demo tools, its result shown and sent
// back as a `tool` message (tool_choice auto) before the model answers.
await page.selectOption("#tools", "required");
await page.fill("#max_tokens", "200"); // room for the longest expression the schema allows
const isChat = (r) => r.url().endsWith("/v1/chat/completions") && r.method() === "POST";
const first = page.waitForRequest((r) => isChat(r) && JSON.parse(r.postData()).tool_choice === "required");
const followUp = page.waitForRequest((r) => isChat(r) && JSON.parse(r.postData()).messages.some((m) => m.role === "tool"));
await page.fill("#input", "6 乘 7 等于几？");
await page.click("#send");
const asked = JSON.parse((await first).postData());
if (asked.tools?.length !== 2) throw new Error(`demo tools not offered: ${JSON.stringify(asked)}`);
const second = JSON.parse((await followUp).postData());
await page.waitForFunction(() => !document.querySelector("#send").disabled, null, { timeout: 120000 });
const made = second.messages.find((m) => m.tool_calls).tool_calls[0];
const reply = second.messages.find((m) => m.role === "tool");
if (second.tool_choice !== "auto" || reply.tool_call_id !== made.id) throw new Error(`follow-up: ${JSON.stringify(second)}`);
const shownCall = await page.textContent(".toolcall");
if (!shownCall.includes(made.function.name + "(")) throw new Error(`tool call shown as ${shownCall}`);
// The result on the page and in the follow-up is what the tool answers for those arguments.
const ran = await fetch(new URL("/demo/tools/" + made.function.name, url), {
  method: "POST", headers: { "Content-Type": "application/json" }, body: made.function.arguments,
});
const out = await ran.json();
const expectedResult = ran.ok ? out.result : "error: " + out.error;
const shownResult = await page.textContent(".msg.tool");
if (reply.content !== expectedResult || !shownResult.endsWith(expectedResult)) {
  throw new Error(`tool result ${JSON.stringify(reply.content)} / shown ${JSON.stringify(shownResult)}, tool answers ${JSON.stringify(expectedResult)}`);
}
// Compare mode: both models answer side by side; the pick is saved as a preference pair.
await page.selectOption("#tools", "");
await page.fill("#max_tokens", "12");
const other = await page.$eval("#compare", (e) => e.options[e.options.length - 1].value);
await page.selectOption("#compare", other);
await page.fill("#input", "你好");
await page.click("#send");
await page.waitForSelector(".vote button.pick", { timeout: 120000 });
const sides = await page.$$eval(".pair .side", (all) => all.map((e) => e.textContent));
if (sides.length !== 2) throw new Error(`compare mode shows ${sides.length} answers`);
await page.click(".vote button.pick >> nth=1"); // B is better
await page.waitForSelector(".voted");
const voted = await page.textContent(".voted");
if (!voted.startsWith("vote saved") || !voted.includes(other)) throw new Error(`after the vote: ${voted}`);
let pairs = 0;
if (votes) {
  const rows = readFileSync(votes, "utf8").trim().split("\n").map((l) => JSON.parse(l));
  const last = rows[rows.length - 1];
  const chosen = last.chosen[last.chosen.length - 1].content, rejected = last.rejected[last.rejected.length - 1].content;
  if (last.chosen_model !== other || last.chosen[0].content !== "你好" || chosen !== sides[1] || rejected !== sides[0]) {
    throw new Error(`vote row ${JSON.stringify(last)} for answers ${JSON.stringify(sides)}`);
  }
  pairs = rows.length;
}
if (shot) await page.screenshot({ path: shot });
await browser.close();
console.log(`browser: sent a message, streamed answer of ${answer.length} chars, thinking switch, tool call ${made.function.name} → ${JSON.stringify(expectedResult)}, side-by-side vote (${pairs} pair saved) — OK`);
