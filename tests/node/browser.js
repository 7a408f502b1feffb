// Loads a page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) and
// prints what the page stored in window.result as JSON. Usage: node browser.js URL
'use strict';
const { chromium } = require('playwright-core');
const fs = require('fs');
const os = require('os');
const path = require('path');

async function main(url) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await context.newPage();
    await page.goto(url);
    await page.waitForFunction(() => window.result !== undefined, null, { timeout: 15000 });
    console.log(JSON.stringify(await page.evaluate(() => window.result)));
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main(process.argv[2]).catch((e) => {
  console.error(e.message);
  process.exit(1);
});
