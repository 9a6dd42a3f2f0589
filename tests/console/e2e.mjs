// Levee console, end to end in a real browser. Started by run.sh, which provides the
// engine, the sink and these variables.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const BASE = process.env.BASE;
const SMTP_PORT = process.env.SMTP_PORT;
const SINK_DIR = process.env.SINK_DIR;
const SHOTS = process.env.SHOTS;
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
const ADMIN_PW = "admin password for the e2e test";
const USER_PW = "user password for the e2e test";
mkdirSync(SHOTS, { recursive: true });

const profile = mkdtempSync(join(tmpdir(), "levee-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1280, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = context.pages()[0] ?? (await context.newPage());
const remote = [];
// Every request the console or a message makes; anything not ours is a failure.
context.on("request", (r) => {
  const u = r.url();
  if (!u.startsWith(BASE) && !u.startsWith("data:") && !u.startsWith("about:")) remote.push(u);
});
page.on("dialog", (d) => d.accept());
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));

let step = "start";
const log = (s) => { step = s; console.log(`# ${s}`); };
const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

function sendMail(to, file) {
  execFileSync("swaks", ["--silent", "2", "--server", "127.0.0.1", "--port", SMTP_PORT,
    "--from", "spammer@spam.test", "--to", to, "--data", `@${file}`], { stdio: "pipe" });
}

function message({ to, subject, fromName = "Spammer", html = null, text = "Buy now.", filename = null }) {
  const b = "LEVEEBOUNDARY";
  let m = `From: "${fromName}" <spammer@spam.test>\r\nTo: ${to}\r\nSubject: ${subject}\r\n` +
    `Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <${Math.random()}@spam.test>\r\nMIME-Version: 1.0\r\n`;
  m += `Content-Type: multipart/mixed; boundary="${b}"\r\n\r\n`;
  m += `--${b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n${text}\r\n${GTUBE}\r\n`;
  if (html) m += `--${b}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n${html}\r\n`;
  if (filename) m += `--${b}\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="${filename}"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVpQAAIAAAAEAA8A//8AALgAAAAAAAAAQAAaAAAAAAAA\r\n`;
  m += `--${b}--\r\n`;
  const dir = join(process.env.WORK, "mail");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${Math.random().toString(36).slice(2)}.eml`);
  execFileSync("sh", ["-c", `cat > '${file}'`], { input: m });
  return file;
}

async function noScriptRan(where) {
  for (const f of page.frames()) {
    const pwned = await f.evaluate(() => window.__pwned).catch(() => undefined);
    assert.equal(pwned, undefined, `script ran in ${where} (${f.url()})`);
  }
}

async function login(user, pw) {
  await page.goto(`${BASE}/login`);
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", pw);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
}

async function logout() {
  await page.goto(`${BASE}/account`);
  await Promise.all([page.waitForNavigation(), page.click("form.logout button")]);
}

async function waitFor(what, fn, ms = 30000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

const hostile = [
  { subject: `<script>window.__pwned=1</script> subject`, fromName: `<img src=x onerror="window.__pwned=1">`, filename: `"><script>window.__pwned=1</script>.exe`,
    html: `<p>Hi</p><script>window.__pwned=1</script><img src="http://remote.invalid/pixel.gif"><img src=x onerror="window.__pwned=1">` },
  { subject: `"><svg onload=window.__pwned=1>`, fromName: `Eve" onmouseover="window.__pwned=1`, filename: `../../etc/passwd`,
    html: `<a href="javascript:window.__pwned=1">click</a><iframe src="http://remote.invalid/"></iframe><style>@import url(http://remote.invalid/x.css);</style><div style="background:url(http://remote.invalid/bg.png)">bg</div>` },
  { subject: `=?utf-8?B?PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+?=`, fromName: `=?utf-8?Q?=3Cscript=3Ewindow.=5F=5Fpwned=3D1=3C/script=3E?=`, filename: `=?utf-8?Q?evil=3Cb=3E.html?=`,
    html: `<math><mtext><table><mglyph><style><img src=x onerror=window.__pwned=1>` +
      `<form action="http://remote.invalid/"><input name=x></form><object data="http://remote.invalid/o"></object><link rel=stylesheet href="http://remote.invalid/l.css"><meta http-equiv="refresh" content="0;url=http://remote.invalid/">` },
];

try {
  log("first-run setup");
  await page.goto(`${BASE}/`);
  assert.match(page.url(), /\/setup$/);
  await shot("setup");
  await page.fill("input[name=code]", process.env.SETUP_CODE);
  await page.fill("input[name=password]", ADMIN_PW);
  await page.fill("input[name=password2]", ADMIN_PW);
  await page.fill("input[name=hostname]", "mx.example.test");
  await page.fill("input[name=domain]", "example.test");
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  assert.match(page.url(), /\/mx\?domain=example\.test$/);
  assert.match(await page.textContent("#mx-record"), /example\.test\.\s+3600\s+IN\s+MX\s+10\s+mx\.example\.test\./);
  await shot("mx");

  log("downstream probe and rules");
  await page.goto(`${BASE}/downstream?domain=example.test`);
  assert.match(await page.textContent("#probe"), /connected/);
  const stampBefore = (await page.textContent("#stamp")).match(/X-Levee-Stamp: ([0-9a-f]{32})/)[1];
  assert.match(await page.textContent("#exchange"), new RegExp(`ExceptIfHeaderMatchesPatterns "\\^\\(${stampBefore}\\)\\$"`));
  await shot("downstream");
  // Rotating makes a new stamp; every snippet accepts the old one too for its grace period.
  await Promise.all([page.waitForNavigation(), page.click("form[action='/downstream/rotate-stamp'] button")]);
  const stampAfter = (await page.textContent("#stamp")).match(/X-Levee-Stamp: ([0-9a-f]{32})/)[1];
  assert.notEqual(stampAfter, stampBefore);
  assert.match(await page.textContent("#previous-stamp"), new RegExp(stampBefore));
  assert.match(await page.textContent("#sieve"), new RegExp(`"${stampAfter}", "${stampBefore}"`));
  assert.match(await page.textContent("#postfix"), new RegExp(`\\(${stampAfter}\\|${stampBefore}\\)`));

  log("add a domain");
  await page.goto(`${BASE}/domains`);
  await page.fill("#add-domain input[name=name]", "second.test");
  await page.fill("#add-domain input[name=downstream]", "");
  await Promise.all([page.waitForNavigation(), page.click("#add-domain button")]);
  assert.match(await page.textContent("main"), /second\.test/);
  assert.match(await page.textContent("main"), /set-up incomplete/);
  await shot("domains");

  log("add end users");
  for (const [name, addr] of [["bob", "bob@example.test"], ["carol", "carol@example.test"]]) {
    await page.goto(`${BASE}/users`);
    await page.fill("#add-user input[name=name]", name);
    await page.selectOption("#add-user select[name=role]", "user");
    await page.fill("#add-user input[name=password]", USER_PW);
    await page.fill("#add-user input[name=addresses]", addr);
    await Promise.all([page.waitForNavigation(), page.click("#add-user button")]);
    assert.match(await page.textContent("main"), new RegExp(`Added ${name}`));
  }
  await shot("users");

  log("send spam (GTUBE) and the hostile corpus with swaks");
  sendMail("bob@example.test", message({ to: "bob@example.test", subject: "GTUBE for bob e2e-release-me" }));
  sendMail("carol@example.test", message({ to: "carol@example.test", subject: "carol-only-secret" }));
  for (const h of hostile) sendMail("bob@example.test", message({ to: "bob@example.test", ...h }));

  log("find it in quarantine");
  await waitFor("5 quarantined messages", async () => {
    await page.goto(`${BASE}/quarantine`);
    return /5 messages\./.test(await page.textContent("main"));
  });
  await noScriptRan("quarantine list");
  await shot("quarantine");
  await page.goto(`${BASE}/quarantine?subject=e2e-release-me`);
  await Promise.all([page.waitForNavigation(), page.click("table.quarantine a")]);
  await page.waitForLoadState("networkidle");
  await shot("message");
  log("release it");
  await Promise.all([page.waitForNavigation(), page.click("form[action$='/release'] button")]);
  assert.match(await page.textContent("main"), /Released/);
  await waitFor("the released message at the sink", async () => {
    const files = readdirSync(SINK_DIR);
    return files.some((f) => readFileSync(join(SINK_DIR, f), "latin1").includes("e2e-release-me"));
  });
  const delivered = readdirSync(SINK_DIR).map((f) => readFileSync(join(SINK_DIR, f), "latin1")).find((t) => t.includes("e2e-release-me"));
  assert.match(delivered, /X-Levee-Stamp: [0-9a-f]{32}/);

  log("dashboard and log");
  await page.goto(`${BASE}/dashboard`);
  assert.ok(await page.$("svg.chart"));
  await shot("dashboard");
  await page.goto(`${BASE}/log`);
  await shot("log");
  await page.goto(`${BASE}/checks`);
  await shot("checks");
  await page.goto(`${BASE}/policy`);
  await shot("policy");
  await logout();

  log("an end user sees only their own mail");
  await login("bob", USER_PW);
  assert.match(page.url(), /\/my\/quarantine$/);
  const mine = await page.textContent("main");
  assert.doesNotMatch(mine, /carol-only-secret/);
  assert.match(mine, /3 messages\./);
  await noScriptRan("bob's quarantine");
  await shot("my-quarantine");
  const ids = await page.$$eval("table.quarantine a", (as) => as.map((a) => a.getAttribute("href")));
  assert.equal(ids.length, 3);
  // Carol's message id, by guessing: bob gets "not found".
  const api = await page.evaluate(async () => (await fetch("/api/v1/quarantine")).json());
  assert.equal(api.total, 3);
  for (const href of ids) {
    log(`hostile corpus: ${href}`);
    await page.goto(`${BASE}${href}`);
    await page.waitForLoadState("networkidle");
    await noScriptRan(href);
    const frame = page.frames().find((f) => f.url().endsWith("/body"));
    assert.ok(frame, "the message frame is there");
  }
  await logout();
  log("carol cannot open bob's messages");
  await login("carol", USER_PW);
  for (const href of ids) {
    const r = await page.goto(`${BASE}${href}`);
    assert.equal(r.status(), 404, href);
  }
  await logout();

  assert.deepEqual(remote, [], "nothing remote was loaded");
  assert.deepEqual(errors, [], "no page errors");
  console.log("ok: console end to end");
} catch (e) {
  console.error(`FAILED at step "${step}": ${e.stack || e}`);
  await page.screenshot({ path: join(process.env.WORK, "failure.png"), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
