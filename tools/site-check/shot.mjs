// Screenshot pages of the built site as a reader sees them (headless Chromium).
// usage: node shot.mjs BASE_URL OUTDIR page1 page2 ...
import chromium from '@sparticuz/chromium';
import puppeteer from 'puppeteer-core';
import fs from 'fs';
const [base, outdir, ...pages] = process.argv.slice(2);
// MathJax from the npm package next to this script, in place of the CDN the site loads
const MATHJAX_DIR = new URL('./node_modules/mathjax/es5/', import.meta.url).pathname;
const browser = await puppeteer.launch({args: chromium.args, executablePath: await chromium.executablePath(), headless: true});
for (const p of pages) {
  const page = await browser.newPage();
  await page.setViewport({width: 1400, height: 1000});
  const problems = [];
  page.on('console', m => { if ((m.type() === 'error' || m.type() === 'warning') && !(m.location().url || '').includes('fonts.g') && !m.text().includes('ERR_FAILED')) problems.push('console ' + m.type() + ': ' + m.text()); });
  page.on('pageerror', e => problems.push('pageerror: ' + e.message));
  page.on('requestfailed', r => { if (!r.url().includes('fonts.g')) problems.push('requestfailed: ' + r.url()); });
  page.on('response', r => { if (r.status() >= 400) problems.push('HTTP ' + r.status() + ' ' + r.url()); });
  await page.setRequestInterception(true);
  page.on('request', r => {
    const u = r.url();
    const m = u.match(/unpkg\.com\/mathjax@3\/es5\/(.*)$/);
    if (m) {
      const f = MATHJAX_DIR + m[1];
      if (fs.existsSync(f)) r.respond({status: 200, contentType: f.endsWith('.js') ? 'application/javascript' : 'font/woff', body: fs.readFileSync(f)});
      else r.respond({status: 404, body: ''});
    }
    else if (u.startsWith(base)) r.continue();
    else r.abort();
  });
  await page.goto(base + p, {waitUntil: 'networkidle0', timeout: 60000});
  await new Promise(r => setTimeout(r, 1500));
  const info = await page.evaluate(() => ({
    title: document.title,
    brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    mathRendered: document.querySelectorAll('mjx-container').length,
    mathRaw: [...document.querySelectorAll('.arithmatex')].filter(e => !e.querySelector('mjx-container')).length,
    height: document.body.scrollHeight,
  }));
  const name = p.replace(/\//g, '_').replace(/_$/, '') || 'home';
  await page.screenshot({path: `${outdir}/${name}.png`, fullPage: !process.env.VIEWPORT});
  console.log(JSON.stringify({page: p, ...info, problems}));
  await page.close();
}
await browser.close();
