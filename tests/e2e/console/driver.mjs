// Drives Debian's headless Chromium through playwright-core against a real
// gateway and agent. Usage: node driver.mjs SCENARIO, with the JSON of
// {url, accessKeyId, secret, instanceId, artifacts, ...} in AIRLOCK_CONSOLE_TEST.
// Prints `RESULT <json>` on success; exits 1 with the reason otherwise.
// Every wait polls a condition with a deadline; none sleeps for a fixed time.

import { createRequire } from 'node:module';
import net from 'node:net';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join } from 'node:path';

const cache = process.env.AIRLOCK_PLAYWRIGHT_DIR || join(homedir(), '.cache', 'airlock-playwright');
const require = createRequire(join(cache, 'node_modules', 'noop.js'));
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.env.AIRLOCK_CONSOLE_TEST || '{}');
const scenario = process.argv[2];
const TIMEOUT = 30_000;
const result = { consoleErrors: [], cspViolations: [] };

async function waitFor(what, fn, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const terminalText = (page) =>
  page.evaluate(() => {
    const rows = document.querySelector('#terminal .xterm-rows');
    return rows ? Array.from(rows.children, (r) => r.textContent.replace(/\u00a0/g, ' ')).join('\n') : '';
  });

async function waitTerminal(page, re, what) {
  return waitFor(what, async () => re.exec(await terminalText(page)));
}

async function typeLine(page, line) {
  await page.locator('#terminal .xterm-helper-textarea').focus();
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}

async function signIn(page, secret = cfg.secret, url = cfg.url) {
  await page.goto(`${url}/console/`);
  await page.fill('#access-key-id', cfg.accessKeyId);
  await page.fill('#secret-access-key', secret);
  await page.click('#signin');
}

async function startShell(page) {
  await page.waitForSelector(`tr[data-instance="${cfg.instanceId}"]`, { timeout: TIMEOUT });
  await page.click(`button.start-shell[data-instance="${cfg.instanceId}"]`);
  await page.waitForSelector('#terminal .xterm-rows', { timeout: TIMEOUT });
  await waitFor('a connected terminal', async () =>
    /Connected to/.test(await page.textContent('#term-status')),
  );
  // Type only once the shell has prompted, as a person would; keys sent
  // earlier are echoed by the tty before the prompt and garble the lines.
  await waitTerminal(page, /[#$%>] *$/m, 'the shell prompt');
}

async function sttySize(page, marker) {
  await typeLine(page, `echo ${marker}=$(stty size)`);
  const m = await waitTerminal(page, new RegExp(`^${marker}=(\\d+) (\\d+)\\s*$`, 'm'), `${marker} stty output`);
  return { rows: Number(m[1]), cols: Number(m[2]) };
}

const scenarios = {
  // A gateway with a 3 s idle timeout: its warning shows in the terminal
  // before the session is closed.
  async idleNotice(page) {
    await signIn(page);
    await startShell(page);
    // Rows joined: long lines wrap in the terminal.
    const joined = async () => (await terminalText(page)).replace(/\n/g, '');
    await waitFor('the idle warning', async () => (await joined()).includes('will be closed in'));
    await waitFor('the idle close', async () => (await joined()).includes('idle timeout reached'));
    const t = await joined();
    result.warningAt = t.indexOf('will be closed in');
    result.closedAt = t.indexOf('idle timeout reached');
    result.warnings = t.split('will be closed in').length - 1;
    result.status = await page.textContent('#term-status');
  },

  // Sign in, see the instance, start a shell, compute 42, resize, exit 3.
  async shell(page) {
    await signIn(page);
    const row = page.locator(`tr[data-instance="${cfg.instanceId}"]`);
    await row.waitFor({ timeout: TIMEOUT });
    result.instanceRow = await row.innerText();
    // The tag filter hides non-matching instances.
    await page.fill('#tag-filter', 'NoSuchTag=x');
    await waitFor('filtered list', async () => (await page.locator('tr[data-instance]').count()) === 0);
    await page.fill('#tag-filter', cfg.tagFilter || '');
    await startShell(page);
    result.sessionId = decodeURIComponent((await page.evaluate(() => location.hash)).split('/').pop());
    await typeLine(page, 'echo $((6*7))');
    await waitTerminal(page, /^42\s*$/m, '42 in the terminal');
    result.sawAnswer = true;
    // Copy: drag across the row that says 42, press the Copy button.
    const rowBox = await page.evaluate(() => {
      const rows = Array.from(document.querySelectorAll('#terminal .xterm-rows > div'));
      const r = rows.find((e) => e.textContent.trim() === '42');
      const b = r.getBoundingClientRect();
      return { x: b.left, y: b.top + b.height / 2 };
    });
    await page.mouse.move(rowBox.x + 1, rowBox.y);
    await page.mouse.down();
    await page.mouse.move(rowBox.x + 200, rowBox.y, { steps: 5 });
    await page.mouse.up();
    await page.click('#copy');
    result.copied = await waitFor('the clipboard', async () =>
      (await page.evaluate(() => navigator.clipboard.readText())).trim(),
    );
    // Paste: clipboard text goes to the shell as typed input.
    await page.evaluate(() => navigator.clipboard.writeText('echo pasted-$((5*5))\r'));
    await page.click('#paste');
    await waitTerminal(page, /^pasted-25\s*$/m, 'the pasted command output');
    result.pasted = true;
    result.sizeBefore = await sttySize(page, 'SZA');
    await page.setViewportSize({ width: 1400, height: 900 });
    result.sizeAfter = await waitFor('stty size to change', async () => {
      const s = await sttySize(page, `SZ${Date.now() % 100000}`);
      return s.cols !== result.sizeBefore.cols || s.rows !== result.sizeBefore.rows ? s : null;
    });
    if (cfg.artifacts) {
      mkdirSync(cfg.artifacts, { recursive: true });
      await page.screenshot({ path: join(cfg.artifacts, 'console-terminal.png') });
    }
    result.encryptedBadge = await page.locator('#term-encrypted').isVisible();
    await typeLine(page, 'exit 3');
    await waitFor('the session to end', async () =>
      /Session ended/.test(await page.textContent('#term-status')),
    );
    result.status = await page.textContent('#term-status');
  },

  // With session encryption required: the browser gets the data key from
  // KMS, answers the challenge, and the shell still works.
  async encrypted(page) {
    await signIn(page);
    await startShell(page);
    await waitTerminal(page, /This session is encrypted using AWS KMS\./, 'the KMS customer message');
    await typeLine(page, `echo ${cfg.marker}-$((6*7))`);
    await waitTerminal(page, new RegExp(`^${cfg.marker}-42\\s*$`, 'm'), 'the decrypted answer');
    result.encryptedBadge = await page.locator('#term-encrypted').isVisible();
    await typeLine(page, 'exit 4');
    await waitFor('the session to end', async () => /Session ended/.test(await page.textContent('#term-status')));
    result.status = await page.textContent('#term-status');
    if (cfg.artifacts) {
      mkdirSync(cfg.artifacts, { recursive: true });
      await page.screenshot({ path: join(cfg.artifacts, 'console-encrypted.png') });
    }
  },

  // A wrong secret: the API's own words appear, and nothing is stored.
  async denied(page) {
    await signIn(page, `${cfg.secret.slice(0, -4)}XXXX`);
    await page.waitForSelector('#error:not([hidden])', { timeout: TIMEOUT });
    result.error = await page.textContent('#error');
    result.stored = await page.evaluate(() => sessionStorage.getItem('airlock.credentials'));
  },

  // A sign-in link (credentials in the fragment, never sent to a server)
  // signs the tab in and is scrubbed from the address bar.
  async link(page) {
    const q = new URLSearchParams({ AccessKeyId: cfg.accessKeyId, SecretAccessKey: cfg.secret });
    await page.goto(cfg.link || `${cfg.url}/console/#/signin?${q}`);
    await page.waitForSelector(`tr[data-instance="${cfg.instanceId}"]`, { timeout: TIMEOUT });
    result.url = page.url();
    result.whoami = await page.textContent('#whoami');
  },

  // StartSession refused (e.g. AccessDenied or a limit): shown as worded.
  async startRefused(page) {
    await signIn(page);
    await page.waitForSelector(`tr[data-instance="${cfg.instanceId}"]`, { timeout: TIMEOUT });
    await page.click(`button.start-shell[data-instance="${cfg.instanceId}"]`);
    await page.waitForSelector('#error:not([hidden])', { timeout: TIMEOUT });
    result.error = await page.textContent('#error');
  },

  // The socket drops; the console calls ResumeSession and carries on.
  async reconnect(page) {
    await signIn(page, cfg.secret, proxy.url);
    await startShell(page);
    await typeLine(page, 'echo before-$((1+1))');
    await waitTerminal(page, /^before-2\s*$/m, 'output before the drop');
    // Cut every TCP connection the browser has through the proxy, as a
    // dead link would; new connections are let through again.
    proxy.cutAll();
    await waitFor('the drop to be noticed', async () => /reconnecting/.test(await page.textContent('#term-status')));
    await waitFor('the reconnect', async () => /Connected to/.test(await page.textContent('#term-status')));
    await typeLine(page, 'echo after-$((2+2))');
    await waitTerminal(page, /^after-4\s*$/m, 'output after the reconnect');
    result.resumed = true;
  },

  // The sessions page lists an active session and terminates it.
  async sessions(page) {
    await signIn(page);
    await page.waitForSelector('#instances', { timeout: TIMEOUT });
    if (cfg.artifacts) await page.screenshot({ path: join(cfg.artifacts, 'console-instances.png') });
    await page.click('#nav-sessions');
    const row = `#active-sessions tr[data-session="${cfg.sessionId}"]`;
    await page.waitForSelector(row, { timeout: TIMEOUT });
    await page.click(`${row} button.terminate`);
    await page.waitForSelector(`#history-sessions tr[data-session="${cfg.sessionId}"]`, { timeout: TIMEOUT });
    result.historyRow = await page.locator(`#history-sessions tr[data-session="${cfg.sessionId}"]`).innerText();
    result.activeLeft = await page.locator(row).count();
    if (cfg.artifacts) await page.screenshot({ path: join(cfg.artifacts, 'console-sessions.png') });
  },

  // A recording is listed, decrypted and verified in the page, and a search
  // hit seeks the player to the hit's time.
  async playback(page) {
    await signIn(page);
    await page.waitForSelector('#instances', { timeout: TIMEOUT });
    await page.click('#nav-recordings');
    const row = `#recordings tr[data-session="${cfg.sessionId}"]`;
    await page.waitForSelector(row, { timeout: TIMEOUT });
    await page.click(`${row} button.play`);
    await page.waitForSelector('#search', { timeout: TIMEOUT });
    result.status = await page.textContent('#rec-status');
    await page.fill('#search', cfg.query);
    await page.click('#search-go');
    await page.waitForSelector('#hits button.hit', { timeout: TIMEOUT });
    result.hits = await page.locator('#hits button.hit').allInnerTexts();
    await page.locator('#hits button.hit').first().click();
    const t = await waitFor('the player to seek', async () => {
      const m = /([\d.]+) s/.exec(await page.textContent('#player-time'));
      return m && Number(m[1]) > 0 ? Number(m[1]) : null;
    });
    result.seekedTo = t;
    if (cfg.artifacts) {
      mkdirSync(cfg.artifacts, { recursive: true });
      await page.screenshot({ path: join(cfg.artifacts, 'console-playback.png') });
    }
  },

  // An altered recording is refused with the reason, not played.
  async playbackRefused(page) {
    await signIn(page);
    await page.waitForSelector('#instances', { timeout: TIMEOUT });
    await page.goto(`${cfg.url}/console/#/recordings/${encodeURIComponent(cfg.sessionId)}`);
    await page.waitForSelector('#error:not([hidden])', { timeout: TIMEOUT });
    result.error = await page.textContent('#error');
    result.player = await page.locator('#player').count();
  },

  // Response headers of the console's assets.
  async headers(page) {
    const resp = await page.goto(`${cfg.url}/console/`);
    result.headers = resp.headers();
    await page.waitForSelector('#signin-form', { timeout: TIMEOUT });
  },
};

/** A loopback TCP relay to the gateway whose connections can be cut. */
function startProxy() {
  const target = new URL(cfg.url);
  const live = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    live.add(client);
    live.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const done = () => {
      client.destroy();
      upstream.destroy();
      live.delete(client);
      live.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        url: `${target.protocol}//127.0.0.1:${server.address().port}`,
        cutAll: () => live.forEach((s) => s.destroy()),
        close: () => server.close(),
      });
    });
  });
}

let proxy = null;

async function main() {
  if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
  const profile = mkdtempSync(join(tmpdir(), 'airlock-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    // The gateway's CA is made per test run; the test trusts it by fiat.
    ignoreHTTPSErrors: true,
    viewport: { width: 1000, height: 700 },
    permissions: ['clipboard-read', 'clipboard-write'],
  });
  try {
    const page = browser.pages()[0] || (await browser.newPage());
    page.on('console', (m) => {
      if (m.type() === 'error') result.consoleErrors.push(m.text());
    });
    await page.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e) => {
        console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
      });
    });
    if (scenario === 'reconnect') proxy = await startProxy();
    await scenarios[scenario](page);
    result.cspViolations = result.consoleErrors.filter((e) => e.startsWith('CSP violation'));
    console.log(`RESULT ${JSON.stringify(result)}`);
  } catch (e) {
    const page = browser.pages()[0];
    if (page && cfg.artifacts) {
      mkdirSync(cfg.artifacts, { recursive: true });
      await page.screenshot({ path: join(cfg.artifacts, `console-${scenario}-failure.png`) }).catch(() => {});
      const text = await terminalText(page).catch(() => '');
      console.error(`terminal:\n${text}`);
    }
    console.error(`console errors: ${JSON.stringify(result.consoleErrors)}`);
    throw e;
  } finally {
    await browser.close();
    if (proxy) proxy.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`FAILED ${scenario}: ${e.stack || e}`);
  process.exit(1);
});
