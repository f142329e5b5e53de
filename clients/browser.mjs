// Runs the spec's fetch example in a real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) from pages on two other
// localhost origins: one allowed with --allow-origin, one not. Then from a
// page that a Vite dev server serves (its origin not allowed), calling the
// API on its own origin through Vite's proxy, as a front end under
// development does: through the shorthand `'/api': target` (which sets
// Host to the target) and through `{ target }` (which passes Host on).
// Then the page on the other origin calls through that proxy. The same
// three calls again from a Nuxt app's page (`nuxi dev` on nuxt/, the
// framework of the Neptun app): through its route rule's proxy and
// Nitro's dev proxy, and from the other origin through the route rule;
// and through the route rule of the same app built for production.
// Last, the allowed page once more, with a fetch that leaves out
// `credentials: 'include'`, the usual mistake: the server's log says so.
//
// Environment: NEPTUN_BASE_URL (http://localhost:PORT), NEPTUN_TOKEN,
// NEPTUN_USER, ALLOWED_PORT, OTHER_PORT, VITE_PORT, NUXT_PORT,
// NUXT_BUILT_PORT, CHAT_ALLOWED, CHAT_OTHER, CHAT_VITE,
// CHAT_VITE_PASS_HOST, CHAT_VIA_PROXY, CHAT_NUXT, CHAT_NUXT_DEV_PROXY,
// CHAT_VIA_NUXT, CHAT_NUXT_BUILT.
// Prints one JSON line with what each page saw; run.py checks the database.

import { spawn } from 'node:child_process';
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

// Nuxt, in a process group of its own (so that its workers go with it),
// writing into a scratch directory of its own (see nuxt/nuxt.config.ts).
const nuxtScratch = mkdtempSync(join(tmpdir(), 'neptun-nuxt-'));
const nuxtCli = new URL('./node_modules/nuxt/bin/nuxt.mjs', import.meta.url).pathname;
const nuxtApp = new URL('./nuxt', import.meta.url).pathname;
const nuxtProcesses = [];
function startNode(what, args, scratch, extraEnv = {}) {
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      NEPTUN_PROXY_TARGET: target,
      NUXT_SCRATCH_DIR: scratch,
      NUXT_TELEMETRY_DISABLED: '1',
      // jiti, which loads nuxt.config.ts, would cache it in nuxt/node_modules.
      JITI_FS_CACHE: 'false',
      ...extraEnv,
    },
  });
  child.what = what;
  child.log = '';
  child.stdout.on('data', (chunk) => { child.log += chunk; });
  child.stderr.on('data', (chunk) => { child.log += chunk; });
  nuxtProcesses.push(child);
  return child;
}
const stopNuxt = () => nuxtProcesses.forEach((child) => {
  try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone already */ }
});
const failed = (child, why) => {
  stopNuxt();
  return new Error(`${child.what} ${why}:\n${child.log.slice(-3000)}`);
};
// Ready once it serves its page (`nuxi dev` builds it on the first request).
async function servesThePage(child, port) {
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    try {
      const response = await fetch(`http://127.0.0.1:${port}/`);
      if (response.ok && (await response.text()).includes('deleteChat')) return;
    } catch { /* not listening yet */ }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw failed(child, 'did not serve its page');
}
// The dev server, and the app built for production and served by node,
// whose route rule proxies too (README says so).
const nuxtPort = env('NUXT_PORT');
const nuxtBuiltPort = env('NUXT_BUILT_PORT');
const nuxtDev = startNode('nuxi dev',
  [nuxtCli, 'dev', nuxtApp, '--host', '127.0.0.1', '--port', nuxtPort], join(nuxtScratch, 'dev'));
const nuxtBuild = startNode('nuxi build', [nuxtCli, 'build', nuxtApp], join(nuxtScratch, 'build'));
await new Promise((resolve) => nuxtBuild.on('exit', resolve));
if (nuxtBuild.exitCode !== 0) throw failed(nuxtBuild, 'failed');
const nuxtBuilt = startNode('the built Nuxt app',
  [join(nuxtScratch, 'build', '.output', 'server', 'index.mjs')], join(nuxtScratch, 'build'),
  { HOST: '127.0.0.1', PORT: nuxtBuiltPort });

const pages = [await serve(env('ALLOWED_PORT')), await serve(env('OTHER_PORT'))];
await servesThePage(nuxtDev, nuxtPort);
await servesThePage(nuxtBuilt, nuxtBuiltPort);
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
    nuxtRouteRule: await attempt(nuxtPort, env('CHAT_NUXT'), ''),
    nuxtDevProxy: await attempt(nuxtPort, env('CHAT_NUXT_DEV_PROXY'), '/dev-proxy'),
    nuxtBuiltRouteRule: await attempt(nuxtBuiltPort, env('CHAT_NUXT_BUILT'), ''),
    otherViaNuxt: await attempt(env('OTHER_PORT'), env('CHAT_VIA_NUXT'),
      `http://localhost:${nuxtPort}`),
    withoutCredentials: await withoutCredentials(env('ALLOWED_PORT'), env('CHAT_OTHER')),
  };
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  pages.forEach((p) => p.close());
  await vite.close();
  stopNuxt();
  rmSync(viteRoot, { recursive: true, force: true });
  rmSync(nuxtScratch, { recursive: true, force: true });
}
