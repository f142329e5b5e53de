// Runs the spec's fetch example in a real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) from pages on two other
// localhost origins: one allowed with --allow-origin, one not. Then from a
// page that a Vite dev server serves (its origin not allowed), calling the
// API on its own origin through Vite's proxy, as a front end under
// development does: through the shorthand `'/api': target` (which sets
// Host to the target) and through `{ target }` (which passes Host on).
// Last, the page on the other origin calls through that proxy. And the
// allowed page once more, with a fetch that leaves out
// `credentials: 'include'`, the usual mistake: the server's log says so.
//
// Environment: NEPTUN_BASE_URL (http://localhost:PORT), NEPTUN_TOKEN,
// NEPTUN_USER, ALLOWED_PORT, OTHER_PORT, VITE_PORT, CHAT_ALLOWED,
// CHAT_OTHER, CHAT_VITE, CHAT_VITE_PASS_HOST, CHAT_VIA_PROXY.
// Prints one JSON line with what each page saw; run.py checks the database.

import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { createServer as createViteServer } from 'vite';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('NEPTUN_BASE_URL');
const specFetch = readFileSync(new URL('./spec_fetch.js', import.meta.url), 'utf8');

// A page whose script is exactly the spec's example, calling the API at `apiBase`.
const pageFor = (apiBase) => `<!doctype html><meta charset="utf-8"><title>front end</title>
<script>window.NEPTUN_BASE_URL = ${JSON.stringify(apiBase)};</script>
<script>${specFetch}</script>`;
const page = pageFor(base);

function serve(port) {
  const server = http.createServer((_, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(page);
  });
  return new Promise((resolve) => server.listen(Number(port), '127.0.0.1', () => resolve(server)));
}

// The Vite page calls /api/... or /pass-host/api/... on its own origin.
const viteRoot = mkdtempSync(join(tmpdir(), 'neptun-vite-'));
writeFileSync(join(viteRoot, 'index.html'), pageFor(''));
// As README's vite.config.js: the proxy's target is the server's address.
const target = `http://127.0.0.1:${new URL(base).port}`;
const vite = await createViteServer({
  configFile: false,
  root: viteRoot,
  logLevel: 'error',
  server: {
    host: '127.0.0.1',
    port: Number(env('VITE_PORT')),
    strictPort: true,
    hmr: false,
    proxy: {
      '/api': target,
      '/pass-host': { target, rewrite: (path) => path.replace(/^\/pass-host/, '') },
    },
  },
});
await vite.listen();

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
  const tab = await context.newPage();
  // The session cookie, set as README and the demo tell a developer to:
  // this line, run in the console of a page on localhost. A cookie does not
  // depend on the port, so every page below and the server get it.
  await tab.goto(`http://localhost:${env('ALLOWED_PORT')}/`);
  await tab.evaluate((token) => {
    document.cookie = `neptun-session=${token}; path=/`;
  }, env('NEPTUN_TOKEN'));
  // `apiBase`, if given, replaces the page's base URL before the call.
  const attempt = async (port, chatId, apiBase) => {
    await tab.goto(`http://localhost:${port}/`);
    return tab.evaluate(async ([user, chat, apiBase]) => {
      if (apiBase !== null) window.NEPTUN_BASE_URL = apiBase;
      try {
        return { resolved: await deleteChat(user, Number(chat)) };
      } catch (error) {
        return { rejected: String(error) };
      }
    }, [env('NEPTUN_USER'), chatId, apiBase ?? null]);
  };
  // A fetch with no `credentials: 'include'`: the browser sends no cookie.
  const withoutCredentials = async (port, chatId) => {
    await tab.goto(`http://localhost:${port}/`);
    return tab.evaluate(async ([base, user, chat]) => {
      const response = await fetch(`${base}/api/users/${user}/chats/${chat}`, { method: 'DELETE' });
      return { status: response.status };
    }, [base, env('NEPTUN_USER'), chatId]);
  };
  const result = {
    allowed: await attempt(env('ALLOWED_PORT'), env('CHAT_ALLOWED')),
    allowedAgain: await attempt(env('ALLOWED_PORT'), env('CHAT_ALLOWED')),
    other: await attempt(env('OTHER_PORT'), env('CHAT_OTHER')),
    viteProxy: await attempt(env('VITE_PORT'), env('CHAT_VITE')),
    viteProxyPassingHost: await attempt(env('VITE_PORT'), env('CHAT_VITE_PASS_HOST'), '/pass-host'),
    otherViaProxy: await attempt(env('OTHER_PORT'), env('CHAT_VIA_PROXY'),
      `http://localhost:${env('VITE_PORT')}`),
    withoutCredentials: await withoutCredentials(env('ALLOWED_PORT'), env('CHAT_OTHER')),
  };
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  pages.forEach((p) => p.close());
  await vite.close();
  rmSync(viteRoot, { recursive: true, force: true });
}
