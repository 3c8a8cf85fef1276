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
await page.fill("#input", "你好");
await page.click("#send");
await page.waitForSelector(".msg.assistant");
// The answer streams in; the send button comes back when the stream ends.
await page.waitForFunction(() => !document.querySelector("#send").disabled, null, { timeout: 60000 });
const answer = await page.textContent(".msg.assistant");
const user = await page.textContent(".msg.user");
if (user !== "你好") throw new Error(`user bubble: ${user}`);
if (!answer || answer.includes("[error")) throw new Error(`assistant bubble: ${answer}`);
if (shot) await page.screenshot({ path: shot });
await browser.close();
console.log(`browser: sent a message, streamed answer of ${answer.length} chars — OK`);
