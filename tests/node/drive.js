// Drives one headless Chromium page (Debian's /usr/bin/chromium through playwright-core) for a
// Python test: one JSON command per stdin line, one JSON answer per stdout line, so the test can
// interleave browser steps with its own clients and server restarts. Every step has a timeout.
//   {"op":"open","url":U} {"op":"goto","url":U} {"op":"wait","js":EXPR,"timeout":MS}
//   {"op":"eval","js":EXPR} {"op":"fill","selector":S,"value":V} {"op":"click","selector":S}
//   {"op":"select","selector":S,"value":V} {"op":"check"|"uncheck","selector":S}
//   {"op":"screenshot","path":P} {"op":"errors"} {"op":"cookies"} {"op":"close"}
'use strict';
const { chromium } = require('playwright-core');
const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');

// Polls an expression until it is truthy. Not waitForFunction: that evaluates strings inside the
// page, which the admin page's Content-Security-Policy (no 'unsafe-eval') rightly forbids.
async function poll(page, js, timeout) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await page.evaluate(js); } catch (e) { last = 'threw: ' + e.message; }
    if (last && !(typeof last === 'string' && last.startsWith('threw: '))) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${js} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const errors = [];
  let page = null;
  const lines = readline.createInterface({ input: process.stdin });
  const answer = (v) => process.stdout.write(JSON.stringify(v) + '\n');
  try {
    for await (const line of lines) {
      if (!line.trim()) continue;
      const c = JSON.parse(line);
      const timeout = c.timeout || 15000;
      try {
        let value = null;
        switch (c.op) {
          case 'open':
            page = await context.newPage();
            page.setDefaultTimeout(timeout);
            page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
            page.on('pageerror', (e) => errors.push(String(e)));
            await page.goto(c.url);
            break;
          case 'goto': await page.goto(c.url); break;
          case 'wait': value = await poll(page, c.js, timeout); break;
          case 'eval': value = await page.evaluate(c.js); break;
          case 'fill': await page.fill(c.selector, c.value, { timeout }); break;
          case 'click': await page.click(c.selector, { timeout }); break;
          case 'select': await page.selectOption(c.selector, c.value, { timeout }); break;
          case 'check': await page.check(c.selector, { timeout }); break;
          case 'uncheck': await page.uncheck(c.selector, { timeout }); break;
          case 'screenshot':
            fs.mkdirSync(path.dirname(c.path), { recursive: true });
            await page.screenshot({ path: c.path, fullPage: c.full !== false });
            break;
          case 'errors': value = errors.slice(); break;
          case 'cookies': value = await context.cookies(); break;
          case 'close': answer({ ok: true }); return;
          default: throw new Error('unknown op ' + c.op);
        }
        answer({ ok: true, value });
      } catch (e) {
        answer({ ok: false, error: String(e.message || e) });
      }
    }
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0)).catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e.message || e) }) + '\n');
  process.exit(1);
});
