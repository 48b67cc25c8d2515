// Loads the page in headless Chromium (WebGPU on SwiftShader) through the DevTools protocol,
// waits for it to finish, checks what it shows and saves a screenshot. Used by .ci/web.
//     node --experimental-websocket examples/web/test-page.mjs URL SCREENSHOT.png [timeout_ms]
// Exit 0 only if the page reached data-state=done (every kernel matched the reference), its
// table has a finite, positive figure in every cell, and it offers the JSON.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, shot, timeout] = process.argv.slice(2);
const deadline = Date.now() + Number(timeout || 600000);
const chrome = process.env.CHROME || '/usr/bin/chromium';
const prof = mkdtempSync(join(tmpdir(), 'wgpu-norm-page-'));
const proc = spawn(chrome, ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader', '--remote-debugging-port=0', `--user-data-dir=${prof}`,
  '--no-first-run', '--window-size=1100,1400', 'about:blank'],
  { stdio: ['ignore', 'ignore', 'ignore'], detached: true });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A hung browser must fail the run, not hang it: a hard stop past the deadline.
setTimeout(() => finish(1, 'FAILED: no answer from the browser before the deadline'),
  Math.max(0, deadline - Date.now()) + 10000).unref();
function finish(code, msg) {
  if (msg) console.log(msg);
  try { process.kill(-proc.pid, 'SIGTERM'); } catch {}
  setTimeout(() => { try { rmSync(prof, { recursive: true, force: true }); } catch {} process.exit(code); }, 300);
}
try {
  const portFile = join(prof, 'DevToolsActivePort');
  while (!existsSync(portFile)) { if (Date.now() > deadline) throw new Error('chromium did not start'); await sleep(100); }
  await sleep(100);
  const port = readFileSync(portFile, 'utf8').split('\n')[0].trim();
  const page = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()).find((t) => t.type === 'page');
  const ws = new WebSocket(page.webSocketDebuggerUrl);
  await new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });
  let id = 0; const pending = new Map();
  const send = (method, params = {}) => new Promise((res) => { const i = ++id; pending.set(i, res); ws.send(JSON.stringify({ id: i, method, params })); });
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
    else if (m.method === 'Runtime.consoleAPICalled') console.log('[console]', m.params.args.map((a) => a.value ?? a.description).join(' '));
    else if (m.method === 'Runtime.exceptionThrown') console.log('[exception]', JSON.stringify(m.params.exceptionDetails).slice(0, 500));
  };
  const evaluate = async (expression) => (await send('Runtime.evaluate', { expression, returnByValue: true })).result?.result?.value;
  await send('Runtime.enable');
  await send('Page.enable');
  await send('Page.navigate', { url });
  let state = '', last = '';
  while (Date.now() < deadline) {
    state = await evaluate('document.body ? document.body.dataset.state || "" : ""');
    const step = await evaluate('document.getElementById("step") ? document.getElementById("step").textContent : ""');
    if (step && step !== last) { console.log('progress:', step); last = step; }
    if (state === 'done' || state === 'failed') break;
    await sleep(500);
  }
  console.log('status:', await evaluate('document.getElementById("status").textContent'));
  const cells = await evaluate(`[...document.querySelectorAll('#results tr')].slice(1).map((r) => [...r.cells].map((c) => c.textContent))`) || [];
  for (const c of cells) console.log(c.join(' | '));
  const png = (await send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true })).result?.data;
  if (png && shot) writeFileSync(shot, Buffer.from(png, 'base64'));
  // The figures themselves, not their rounded text: a CPU adapter's can be tiny.
  const doc = JSON.parse(await evaluate('JSON.stringify(window.results || null)') || 'null');
  const figures = (doc?.results || []).flatMap((r) => [r.copy_gbps, r.layer_norm.gbps, r.rms_norm.gbps]);
  const finite = cells.length > 0 && figures.length === 3 * cells.length
    && figures.every((g) => Number.isFinite(g) && g > 0);
  const json = await evaluate('!!document.getElementById("json")');
  if (state !== 'done') finish(1, `FAILED: the page ended in state "${state || 'none (timeout)'}"`);
  else if (!finite) finish(1, 'FAILED: the table lacks a finite figure');
  else if (!json) finish(1, 'FAILED: no JSON offered');
  else finish(0, `ok: ${cells.length} rows checked and timed${shot ? `, screenshot ${shot}` : ''}`);
} catch (e) { finish(2, 'runner error: ' + e); }
