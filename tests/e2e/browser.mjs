// Drives the web chat page in headless Chromium: sends a message, waits for the streamed answer.
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
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
if (shot) await page.screenshot({ path: shot });
await browser.close();
console.log(`browser: sent a message, streamed answer of ${answer.length} chars, thinking switch — OK`);
