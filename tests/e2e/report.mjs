// Opens a `minimind report` page in headless Chromium: its charts render (every line has a visible
// extent), its tables and answers are there, and a screenshot of it is not blank.
import { chromium } from "playwright-core";
import { statSync } from "node:fs";

const [file, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
const requests = [];
page.on("request", (r) => { if (!r.url().startsWith("file:")) requests.push(r.url()); });
await page.goto(`file://${file}`);
const charts = await page.$$eval("svg.chart", (all) => all.map((svg) => {
  const box = svg.getBoundingClientRect();
  const lines = [...svg.querySelectorAll("polyline")].map((l) => l.getBBox());
  return { width: box.width, height: box.height, lines: lines.map((b) => b.width + b.height) };
}));
if (charts.length < 2) throw new Error(`expected the loss and lr charts, found ${charts.length}`);
for (const c of charts) {
  if (!(c.width > 100 && c.height > 100) || c.lines.length === 0 || c.lines.some((extent) => !(extent > 0))) {
    throw new Error(`a chart did not render: ${JSON.stringify(c)}`);
  }
}
const text = await page.textContent("body");
for (const want of ["loss (first → last)", "Sample answers", "tokens/s"]) {
  if (!text.includes(want)) throw new Error(`the page lacks ${want}`);
}
if (requests.length) throw new Error(`the page fetched ${requests.join(", ")}`);
const path = shot || `${file}.png`;
await page.screenshot({ path, fullPage: true });
if (statSync(path).size < 20000) throw new Error(`the screenshot is nearly blank (${statSync(path).size} bytes)`);
console.log(`report page: ${charts.length} charts rendered, screenshot ${statSync(path).size} bytes`);
await browser.close();
