// Drives the live dashboard in headless Chromium (Debian's package, via playwright-core):
// waits for the event stream, checks that the numbers move under traffic and that every key
// panel has content, and saves a full-page screenshot. Usage: node check.mjs URL SCREENSHOT
import { createRequire } from "node:module";
const require = createRequire(process.env.PLAYWRIGHT_DIR + "/");
const { chromium } = require("playwright-core");

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => { console.error("dashboard check failed: " + msg); await browser.close(); process.exit(1); };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) external.push(r.url()); });
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 15000 });
  const read = () => page.evaluate(() => ({
    rps: document.getElementById("rps").textContent,
    tail: document.querySelectorAll("#tail tr").length,
    first: document.querySelector("#tail tr td")?.textContent ?? "",
    ids: [...document.querySelectorAll("#tail tr")].map((r) => r.children[1]?.textContent).join(","),
    mix: document.querySelectorAll("#mix .row").length,
    hitrate: document.getElementById("hitrate").textContent,
    latency: document.getElementById("latency").textContent,
    cost: document.getElementById("cost").textContent,
    circuits: document.getElementById("circuits").textContent,
    queues: document.getElementById("queues").textContent,
    judged: document.querySelectorAll("#judged tr").length,
    errors: document.getElementById("errors").textContent,
    refused: document.getElementById("refused").textContent,
  }));
  const before = await read();
  await page.waitForTimeout(3500);
  const after = await read();
  if (after.rps === "–" || Number(after.rps) <= 0) await fail("no request rate: " + JSON.stringify(after));
  if (JSON.stringify(before) === JSON.stringify(after)) await fail("nothing moved in 3.5 s: " + JSON.stringify(after));
  if (after.tail < 5) await fail("the request tail is empty");
  if (after.mix < 1) await fail("no route/model mix");
  if (!after.latency.includes("ms") || after.latency.startsWith("–")) await fail("no latency: " + after.latency);
  if (!after.hitrate.includes("%")) await fail("no cache hit rate");
  if (!after.cost.startsWith("$")) await fail("no cost burn");
  if (!after.circuits.includes("closed")) await fail("no circuit states: " + after.circuits);
  if (!after.queues.includes("in use")) await fail("no provider queues");
  if (after.judged < 1) await fail("no per-route semantic cache row (/admin/cache)");
  if (!after.errors.includes("% 4xx") || after.errors.startsWith("0.0 % 5xx · 0.0 % 4xx")) await fail("the sidecar's own 4xx are not shown: " + after.errors);
  if (!after.refused.includes("404")) await fail("the 404s are not named: " + after.refused);
  if (external.length) await fail("the page fetched from elsewhere: " + external.join(" "));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ before, after }));
} catch (e) {
  await fail(String(e));
}
await browser.close();
