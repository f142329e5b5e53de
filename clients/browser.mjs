// Runs the spec's fetch example in a real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) from pages on two other
// localhost origins: one allowed with --allow-origin, one not.
//
// Environment: NEPTUN_BASE_URL (http://localhost:PORT), NEPTUN_TOKEN,
// NEPTUN_USER, ALLOWED_PORT, OTHER_PORT, CHAT_ALLOWED, CHAT_OTHER.
// Prints one JSON line with what each page saw; run.py checks the database.

import http from 'node:http';
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('NEPTUN_BASE_URL');
const specFetch = readFileSync(new URL('./spec_fetch.js', import.meta.url), 'utf8');

// A page whose script is exactly the spec's example.
const page = `<!doctype html><meta charset="utf-8"><title>front end</title>
<script>window.NEPTUN_BASE_URL = ${JSON.stringify(base)};</script>
<script>${specFetch}</script>`;

function serve(port) {
  const server = http.createServer((_, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(page);
  });
  return new Promise((resolve) => server.listen(Number(port), '127.0.0.1', () => resolve(server)));
}

const pages = [await serve(env('ALLOWED_PORT')), await serve(env('OTHER_PORT'))];
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const context = await browser.newContext();
  // The session cookie, set in the browser for the server's host.
  await context.addCookies([{
    name: 'neptun-session', value: env('NEPTUN_TOKEN'),
    domain: new URL(base).hostname, path: '/', httpOnly: true, sameSite: 'Lax',
  }]);
  const tab = await context.newPage();
  const attempt = async (port, chatId) => {
    await tab.goto(`http://localhost:${port}/`);
    return tab.evaluate(async ([user, chat]) => {
      try {
        return { resolved: await deleteChat(user, Number(chat)) };
      } catch (error) {
        return { rejected: String(error) };
      }
    }, [env('NEPTUN_USER'), chatId]);
  };
  const result = {
    allowed: await attempt(env('ALLOWED_PORT'), env('CHAT_ALLOWED')),
    allowedAgain: await attempt(env('ALLOWED_PORT'), env('CHAT_ALLOWED')),
    other: await attempt(env('OTHER_PORT'), env('CHAT_OTHER')),
  };
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  pages.forEach((p) => p.close());
}
