// Drives the agent's dashboard in headless Chromium (playwright-core,
// Debian's chromium). Usage: node dashboard.mjs URL SERVICE SCREENSHOT [FAILING]
// FAILING: text the health panel's failing list must come to contain.
// Prints one JSON line: what the page showed, and every URL it requested.
import { chromium } from "playwright-core";

const [url, service, screenshot, failing = ""] = process.argv.slice(2);
const origin = new URL(url).origin;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const result = { requests: [], outside: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  page.on("request", (r) => {
    result.requests.push(r.url());
    if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) result.outside.push(r.url());
  });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(
    (name) => [...document.querySelectorAll("#services li")].some((li) => li.dataset.service === name),
    service,
    { timeout: 20000 },
  );
  // Select the service, then read the charts' data twice, 4 s apart.
  await page.click(`#services li[data-service="${service}"]`);
  const read = () =>
    page.evaluate(() => ({
      polls: window.apmDashboard.polls,
      selected: window.apmDashboard.state.last && window.apmDashboard.state.last.selected,
      rps: window.apmDashboard["chart-rps"],
      latency: window.apmDashboard["chart-latency"],
      health: document.getElementById("health").textContent,
      failing: document.getElementById("failing").textContent,
      alerts: document.getElementById("alerts").textContent,
      svgOrCanvas: document.querySelectorAll(".chart canvas").length,
      saturation: window.apmDashboard["chart-saturation"],
      saturationNow: document.getElementById("saturation-now").textContent,
      network: document.getElementById("network").textContent,
    }));
  await page.waitForTimeout(2500);
  result.first = await read();
  await page.waitForTimeout(4000);
  result.second = await read();
  // Wait for the failing check the test stops to show: another may already
  // be failing on this host (a nearly full disk), so wait for its text.
  await page.waitForFunction(
    (text) => {
      const shown = document.getElementById("failing").textContent;
      return shown.length > 0 && shown.includes(text);
    },
    failing,
    { timeout: 20000 },
  ).catch(() => {});
  result.third = await read();
  // The slowest route's recent traces, then the first one as a waterfall.
  await page.click("#slowest tr.clickable");
  await page.waitForFunction(
    () => {
      const shown = document.getElementById("trace-filter").textContent;
      return document.querySelector("#traces tr.clickable") && !shown.includes("all operations");
    },
    null,
    { timeout: 10000 },
  ).catch(() => {});
  result.route = await page.evaluate(() => document.querySelector("#slowest tr.clickable").dataset.operation);
  await page.click("#traces tr.clickable").catch(() => {});
  await page.waitForSelector("#waterfall .span-row", { timeout: 10000 }).catch(() => {});
  result.waterfall = await page.evaluate(() => ({
    filter: document.getElementById("trace-filter").textContent,
    trace: document.getElementById("waterfall").dataset.trace || "",
    rows: [...document.querySelectorAll("#waterfall .span-row")].map((r) => ({
      label: r.querySelector(".span-label").textContent,
      width: r.querySelector(".span-bar").style.width,
      ms: Number(r.querySelector(".span-ms").textContent),
    })),
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
