// The admin console in a real browser: Debian's Chromium driven by playwright-core.
//
// Run by tests/tests/console.rs, which starts the broker, a GitHub-style issuer and the
// Entra emulator, makes real exchanges, and passes everything through the environment:
//   WIF_UI_URL, WIF_UI_ADMIN_TOKEN, WIF_UI_READER_TOKEN, WIF_UI_TENANT, WIF_UI_CLIENT_ID,
//   WIF_UI_GITHUB_ISSUER, WIF_UI_TOKEN_MATCH (a push to `staging`), WIF_UI_TOKEN_PR
//   (a pull request), WIF_UI_CHROMIUM, WIF_UI_SCREENSHOTS.
// Each step prints `ok - ...`; the first failure stops the run with a screenshot
// (failure.png) and exit status 1. A page that loads anything from another origin, or
// that the Content-Security-Policy blocks, fails the run.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set; run this through tests/tests/console.rs`);
  }
  return value;
}

const base = env("WIF_UI_URL");
const adminToken = env("WIF_UI_ADMIN_TOKEN");
const readerToken = env("WIF_UI_READER_TOKEN");
const tenant = env("WIF_UI_TENANT");
const clientId = env("WIF_UI_CLIENT_ID");
const githubIssuer = env("WIF_UI_GITHUB_ISSUER");
const matchToken = env("WIF_UI_TOKEN_MATCH");
const pullRequestToken = env("WIF_UI_TOKEN_PR");
const executablePath = env("WIF_UI_CHROMIUM");
const screenshots = env("WIF_UI_SCREENSHOTS");

const SUBJECT = "repo:contoso/app:ref:refs/heads/staging";
const TIMEOUT = 15000;

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

let passed = 0;
const problems = [];

async function step(name, body) {
  await body();
  passed += 1;
  console.log(`ok - ${name}`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

// Layout facts from the DOM: nothing wider than the viewport (no sideways scrolling), and
// each `selectors` element inside it. Returns the viewport width.
async function fitsViewport(page, where, selectors = []) {
  const facts = await page.evaluate((sels) => {
    const boxes = sels.map((sel) => {
      const el = document.querySelector(sel);
      if (!el) { return { sel, missing: true }; }
      const r = el.getBoundingClientRect();
      return { sel, left: r.left, right: r.right, width: r.width };
    });
    return { inner: window.innerWidth, scroll: document.documentElement.scrollWidth, boxes };
  }, selectors);
  check(facts.scroll <= facts.inner, `${where}: the page is ${facts.scroll}px wide in a ${facts.inner}px window`);
  for (const box of facts.boxes) {
    check(!box.missing, `${where}: no ${box.sel}`);
    check(box.left >= 0 && box.right <= facts.inner + 0.5, `${where}: ${box.sel} spans ${box.left}..${box.right}px of ${facts.inner}px`);
  }
  return facts.inner;
}

// Each page again at a phone's width, screenshot `<name>-phone.png`.
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 900 };
async function onPhone(page, name, selectors = []) {
  await page.setViewportSize(PHONE);
  await fitsViewport(page, `${name} at ${PHONE.width}px`, selectors);
  await shot(page, `${name}-phone`);
  await page.setViewportSize(DESKTOP);
}

async function text(page, selector) {
  return (await page.locator(selector).first().textContent({ timeout: TIMEOUT })) ?? "";
}

// Waits until the wizard's live preview has answered the latest input (the page marks
// the form pending as soon as anything is typed) and then until `predicate(arg)` holds.
// Functions, not strings: the Content-Security-Policy forbids eval in the page.
async function draftSettled(page, predicate, arg) {
  await page.waitForFunction(() => document.querySelector("#wizard")?.dataset.draftState === "ready", null, { timeout: TIMEOUT });
  await page.waitForFunction(predicate, arg, { timeout: TIMEOUT });
}

async function signIn(page, token) {
  await page.goto(`${base}/ui/identities`);
  await page.waitForURL(/\/ui\/login/, { timeout: TIMEOUT });
  await page.fill("#token", token);
  await Promise.all([
    page.waitForURL(/\/ui\/identities$/, { timeout: TIMEOUT }),
    page.click("form[action='/ui/login'] button[type=submit]"),
  ]);
}

async function signOut(page) {
  await Promise.all([
    page.waitForURL(/\/ui\/login/, { timeout: TIMEOUT }),
    page.click("form[action='/ui/logout'] button"),
  ]);
}

const userDataDir = mkdtempSync(join(tmpdir(), "wif-console-chromium-"));
let context;
let page;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  const origin = new URL(base).origin;
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(origin) && !url.startsWith("data:") && !url.startsWith("about:")) {
      problems.push(`request to another origin: ${url}`);
    }
  });
  page.on("console", (message) => {
    if (message.type() === "error") {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));

  await step("an unauthenticated visit lands on the sign-in page", async () => {
    await page.goto(`${base}/ui/`);
    await page.waitForURL(/\/ui\/login\?next=/);
    check((await text(page, "h1")) === "Sign in", "no sign-in heading");
    const hint = await text(page, "[data-testid=dev-hint]");
    check(hint.includes("wif-broker dev") && hint.includes("admin console"), `the sign-in page does not say where the dev token is: ${hint}`);
    await fitsViewport(page, "sign-in", ["section.login"]);
    await shot(page, "sign-in");
    await onPhone(page, "sign-in", ["section.login", "#token"]);
  });

  await step("a wrong token is refused with the reason", async () => {
    await page.fill("#token", "not-a-token");
    await page.click("form[action='/ui/login'] button[type=submit]");
    await page.waitForSelector("[data-testid=error]");
    check((await text(page, "[data-testid=error]")).includes("not accepted"), "no refusal text");
    // The browser logs the 401 answer itself as an error; that one is expected.
    const expected = problems.findIndex((p) => p.includes("status of 401"));
    check(expected >= 0, "the refusal was not a 401");
    problems.splice(expected, 1);
  });

  await step("the admin signs in and sees the identities", async () => {
    await signIn(page, adminToken);
    check((await text(page, "[data-testid=who]")).includes("alice"), "the admin is not named");
    check((await page.locator("tr[data-identity=deploy]").count()) === 1, "identity deploy not listed");
    await page.fill("input[name=q]", "payments");
    await page.click("form.search button");
    await page.waitForURL(/q=payments/);
    check((await page.locator("tr[data-identity]").count()) === 1, "the search did not narrow the list");
    check((await page.locator("tr[data-identity=payments]").count()) === 1, "payments not found");
    await page.goto(`${base}/ui/identities`);
    await fitsViewport(page, "identities", ["table.list"]);
    await shot(page, "identities");
    await onPhone(page, "identities", ["form.search"]);
  });

  await step("the admin creates an identity", async () => {
    await page.click("[data-testid=new-identity]");
    await page.fill("#name", "web");
    await page.fill("#tenant_id", tenant);
    await page.fill("#client_id", clientId);
    await Promise.all([page.waitForURL(/\/ui\/identities\/web\?notice=identity-created/), page.click("[data-testid=save]")]);
    check((await text(page, "h1")).includes("web"), "not on the identity page");
    await page.waitForSelector("[data-testid=no-credentials]");
  });

  await step("the wizard builds a namespace-wide Kubernetes expression live", async () => {
    await page.click("[data-testid=add-credential]");
    await page.waitForURL(/\/credentials\/new$/);
    check(await page.isVisible("fieldset[data-scenario=github]"), "the GitHub fields are not shown");
    check(await page.isHidden("fieldset[data-scenario=kubernetes]"), "the Kubernetes fields are shown for GitHub");
    await page.check("[data-testid=scenario-kubernetes]");
    check(await page.isHidden("fieldset[data-scenario=github]"), "the GitHub fields stay shown");
    await page.fill("#k8s_issuer", "https://westeurope.oic.prod-aks.azure.com/tenant/cluster/");
    await page.fill("#k8s_namespace", "payments");
    await page.check("#k8s_all");
    await draftSettled(
      page,
      (value) => document.querySelector("#subject").textContent === value,
      "claims['sub'] matches 'system:serviceaccount:payments:*'",
    );
    check((await text(page, "#rule-kind")) === "expression", "not shown as an expression");
  });

  await step("the wizard's live errors name fields by their labels", async () => {
    await page.check("[data-testid=scenario-github]");
    await page.fill("#gh_issuer", githubIssuer);
    await page.fill("#gh_org", "contoso org");
    await page.fill("#gh_repo", "");
    await page.fill("#gh_value", "");
    await draftSettled(page, () => document.querySelector("#problems [data-field=gh_org]") !== null);
    const names = await page.locator("#problems li > b").allTextContents();
    for (const [field, label] of [["gh_org", "Organization (owner)"], ["gh_repo", "Repository"], ["gh_value", "Branch, tag or environment"]]) {
      check(!names.includes(field), `a live error names the field id ${field}: ${names.join(", ")}`);
      check(names.includes(label), `no live error labelled "${label}": ${names.join(", ")}`);
    }
    await onPhone(page, "wizard", ["#wizard", "aside.preview"]);
  });

  await step("the wizard builds the exact GitHub subject and validates as the admin types", async () => {
    await page.check("[data-testid=scenario-github]");
    await page.fill("#gh_issuer", githubIssuer);
    await page.fill("#gh_org", "contoso");
    await page.fill("#gh_repo", "app");
    await page.selectOption("#gh_entity", "branch");
    await page.fill("#gh_value", "staging");
    await page.fill("#name", "x");
    await draftSettled(
      page,
      (value) => document.querySelector("#subject").textContent === value && document.querySelector("#problems [data-field=name]") !== null,
      SUBJECT,
    );
    check(await page.isDisabled("#save"), "save is enabled with a broken rule");
    check((await page.getAttribute("#name", "aria-invalid")) === "true", "the name field is not marked");
    await page.fill("#name", "github-staging");
    await draftSettled(page, () => document.querySelector("#problems").children.length === 0 && document.querySelector("#valid").className === "ok");
    check(await page.isEnabled("#save"), "save stays disabled for a valid credential");
    check((await text(page, "[data-testid=subject]")) === SUBJECT, "the subject is not exact");
    const graph = JSON.parse(await text(page, "[data-testid=graph]"));
    const expected = { name: "github-staging", issuer: githubIssuer, subject: SUBJECT, audiences: ["api://AzureADTokenExchange"] };
    check(JSON.stringify(graph) === JSON.stringify(expected), `the Graph JSON is ${JSON.stringify(graph)}`);
    await shot(page, "wizard");
  });

  await step("saving shows the credential with the exact subject", async () => {
    await Promise.all([page.waitForURL(/notice=credential-created/), page.click("#save")]);
    check((await text(page, "[data-testid=notice]")).includes("github-staging"), "no notice");
    const row = page.locator("tr[data-credential=github-staging]");
    check((await row.count()) === 1, "the credential is not listed");
    check((await row.locator("code.subject").textContent()) === SUBJECT, "the listed subject is not exact");
    await shot(page, "identity");
  });

  await step("Test it: a matching token says match", async () => {
    await Promise.all([page.waitForURL(/\/ui\/test\?identity=web/), page.click("a[href^='/ui/test?identity=']")]);
    await page.check("[data-testid=mode-token]");
    await page.fill("#token", matchToken);
    await Promise.all([page.waitForLoadState("load"), page.click("[data-testid=run-test]")]);
    await page.waitForSelector("[data-testid=verdict]");
    check((await page.getAttribute("[data-testid=verdict]", "data-outcome")) === "ok", "not a match");
    const verdict = await text(page, "[data-testid=verdict]");
    check(verdict.includes("Match") && verdict.includes("web"), `verdict: ${verdict}`);
    check((await text(page, "[data-testid=matches]")).includes("github-staging"), "the matching credential is not named");
    await fitsViewport(page, "Test it (match)", ["[data-testid=result]", "[data-testid=checks]"]);
    await shot(page, "test-match");
  });

  await step("Test it: a pull-request token names the failing subject", async () => {
    await page.fill("#token", pullRequestToken);
    await Promise.all([page.waitForLoadState("load"), page.click("[data-testid=run-test]")]);
    await page.waitForSelector("[data-testid=verdict]");
    check((await page.getAttribute("[data-testid=verdict]", "data-outcome")) === "no_matching_credential", "the pull request matched");
    const miss = page.locator("tr.near-miss[data-credential=github-staging]");
    check((await miss.count()) === 1, "github-staging is not a near miss");
    check((await miss.getAttribute("data-failed")) === "subject", "the failed check is not the subject");
    const why = (await miss.textContent()) ?? "";
    check(why.includes("repo:contoso/app:pull_request") && why.includes(SUBJECT), `near miss: ${why}`);
    await fitsViewport(page, "Test it (near misses)", ["[data-testid=result]", "[data-testid=near-misses]", "[data-testid=checks]"]);
    await shot(page, "test-pull-request");
    await onPhone(page, "test-pull-request", ["[data-testid=verdict]", "#token"]);
  });

  await step("a reader sees the wizard but cannot save", async () => {
    await signOut(page);
    await signIn(page, readerToken);
    check((await text(page, "[data-testid=who]")).includes("reader"), "not signed in as a reader");
    await page.goto(`${base}/ui/identities/web`);
    check((await page.getAttribute("[data-testid=delete-github-staging]", "aria-disabled")) === "true", "delete is enabled for a reader");
    await page.goto(`${base}/ui/identities/web/credentials/new`);
    await page.fill("#gh_issuer", githubIssuer);
    await page.fill("#gh_org", "contoso");
    await page.fill("#gh_repo", "app");
    await page.fill("#gh_value", "reader-branch");
    await page.fill("#name", "reader-attempt");
    await draftSettled(page, () => document.querySelector("#valid").className === "ok");
    check(await page.isDisabled("#save"), "save is enabled for a reader");
    await shot(page, "reader-wizard");
    const csrf = await page.inputValue("#wizard input[name=csrf]");
    const response = await context.request.post(`${base}/ui/identities/web/credentials`, {
      form: {
        csrf, identity: "web", scenario: "github", gh_issuer: githubIssuer, gh_org: "contoso", gh_repo: "app",
        gh_entity: "branch", gh_value: "reader-branch", name: "reader-attempt",
      },
      maxRedirects: 0,
    });
    check(response.status() === 403, `a reader's save answered ${response.status()}`);
    await page.goto(`${base}/ui/identities/web`);
    check((await page.locator("tr[data-credential=reader-attempt]").count()) === 0, "the reader's credential exists");
    await signOut(page);
  });

  await step("the admin deletes the credential", async () => {
    await signIn(page, adminToken);
    await page.goto(`${base}/ui/identities/web`);
    await page.click("[data-testid=delete-github-staging]");
    await page.waitForURL(/\/credentials\/github-staging\/delete$/);
    await Promise.all([page.waitForURL(/notice=credential-deleted/), page.click("[data-testid=confirm-delete]")]);
    await page.waitForSelector("[data-testid=no-credentials]");
    await shot(page, "deleted");
  });

  await step("the activity page shows the exchanges, each denial with its reason, and the chart", async () => {
    await page.click("nav a[href='/ui/activity']");
    await page.waitForURL(/\/ui\/activity/);
    const granted = page.locator("tr.event[data-class=granted]");
    check((await granted.count()) >= 1, "no granted exchange listed");
    check(((await granted.first().textContent()) ?? "").includes("deploy"), "the granted exchange does not name identity deploy");
    const denied = page.locator("tr.event[data-class=denied]");
    check((await denied.count()) >= 1, "no denied exchange listed");
    const noMatch = denied.filter({ hasText: "no_matching_credential" }).first();
    const reason = (await noMatch.locator("td.reason").textContent()) ?? "";
    check(reason.includes("no_matching_credential") && reason.includes("no federated credential matches"), `denial reason: ${reason}`);
    check((await page.locator("tr.event[data-class=upstream]").count()) >= 1, "no upstream error listed");
    const content = await page.locator("main").evaluate((main) => {
      const style = getComputedStyle(main);
      return main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    });
    for (const chart of ["chart-outcome", "chart-identity"]) {
      const svg = page.locator(`svg[data-testid=${chart}]`);
      check((await svg.locator("rect.bar").count()) >= 1, `${chart} has no bars`);
      const box = await svg.boundingBox();
      check(box && box.height > 100, `${chart} is not drawn: ${JSON.stringify(box)}`);
      check(box.width >= content - 1, `${chart} is ${box.width}px wide of ${content}px`);
    }
    // A refusal before the token was read has no subject: said so, not an empty chip.
    check((await page.locator("[data-testid=no-subject]").count()) >= 1, "the refusal without a subject is not listed as such");
    const chips = await page.locator("tr.event code").allTextContents();
    check(chips.every((c) => c.trim() !== ""), "an event shows an empty chip");
    // Refused for the identity it named: charted under that identity, not "no identity".
    const legend = await page.locator("svg[data-testid=chart-identity] + ul.legend").textContent();
    check(legend.includes("payments"), `identity_not_allowed for payments is not charted under payments: ${legend}`);
    const refusal = page.locator("tr.event", { hasText: "identity_not_allowed" }).first();
    check(((await refusal.textContent()) ?? "").includes("payments"), "the identity_not_allowed event does not name payments");
    await fitsViewport(page, "activity", ["svg[data-testid=chart-outcome]", "table.events"]);
    await shot(page, "activity");
    await onPhone(page, "activity", ["svg[data-testid=chart-outcome]", "svg[data-testid=chart-identity]"]);
    await page.selectOption("select[name=outcome]", "denied");
    await Promise.all([page.waitForURL(/outcome=denied/), page.click("form.filters button")]);
    const filtered = await page.locator("tr.event").count();
    check(filtered >= 1, "the outcome filter for denied listed no event");
    check(filtered === (await page.locator("tr.event[data-class=denied]").count()), "the outcome filter let other events through");
    await signOut(page);
  });

  check(problems.length === 0, `the pages had problems:\n${problems.join("\n")}`);
  console.log(`${passed} passed, 0 failed`);
} catch (error) {
  console.log(`not ok - ${error.message}`);
  if (problems.length > 0) {
    console.log(problems.join("\n"));
  }
  if (page) {
    await page.screenshot({ path: join(screenshots, "failure.png"), fullPage: true }).catch(() => {});
    console.log(`at ${page.url()}`);
  }
  console.log(`${passed} passed, 1 failed`);
  process.exitCode = 1;
} finally {
  if (context) {
    await context.close().catch(() => {});
  }
  rmSync(userDataDir, { recursive: true, force: true });
}
