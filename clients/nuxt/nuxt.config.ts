// The Nuxt front end of the client checks (see browser.mjs): a page whose
// script is the spec's fetch example, calling the API on its own origin
// through Nuxt's two proxies, set up as README's "From a front end in
// development" shows. NEPTUN_PROXY_TARGET is the server's
// http://127.0.0.1:PORT.
import { readFileSync } from 'node:fs'

const target = process.env.NEPTUN_PROXY_TARGET
if (!target) throw new Error('NEPTUN_PROXY_TARGET is not set')
// What Nuxt writes goes there, not into the checkout.
const scratch = process.env.NUXT_SCRATCH_DIR
if (!scratch) throw new Error('NUXT_SCRATCH_DIR is not set')
const specFetch = readFileSync(new URL('../spec_fetch.js', import.meta.url), 'utf8')

export default defineNuxtConfig({
  buildDir: `${scratch}/.nuxt`,
  vite: { cacheDir: `${scratch}/vite` },
  nitro: {
    output: { dir: `${scratch}/.output` },
    // Nitro's proxy of the dev server only, under a prefix of its own here.
    devProxy: {
      '/dev-proxy/api': { target: `${target}/api`, changeOrigin: true },
    },
  },
  devtools: { enabled: false },
  // It would write node_modules/.cache/nuxt here.
  experimental: { chromeDevtoolsProjectSettings: false },
  telemetry: false,
  app: {
    head: {
      script: [{ innerHTML: 'window.NEPTUN_BASE_URL = ""' }, { innerHTML: specFetch }],
    },
  },
  // README's form: a route rule, which `nuxi dev` and a built app both follow.
  routeRules: {
    '/api/users/**': { proxy: `${target}/api/users/**` },
  },
})
