// The stripe-gateway console: fetches the admin JSON endpoints with the admin token and
// shows them. The page itself is served only with the session cookie (login.js gets it). Every value goes into the page as text (textContent), never as markup; the
// charts are SVG drawn by the gateway, parsed as SVG and stripped of anything active.
"use strict";

(function () {
  const TOKEN_KEY = "stripe-gateway-admin-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  let timer = null;
  let refreshMs = 2000;
  let webhooksSeen = null;

  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  class Unauthorized extends Error {}

  // The admin endpoints take the token, never the cookie: it is not even sent to them
  // (credentials "omit"), except to POST /admin/console/session, which renews it.
  async function call(method, path, body, credentials) {
    const headers = { Authorization: "Bearer " + token() };
    const init = { method, headers, cache: "no-store", credentials: credentials || "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) throw new Unauthorized();
    return response;
  }

  async function getJson(path) {
    const response = await call("GET", path);
    const data = await response.json();
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || response.statusText;
      throw new Error(message);
    }
    return data;
  }

  function text(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function cell(row, value, cls) {
    const td = document.createElement("td");
    td.textContent = text(value);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fillBody(table, rows, build) {
    const body = table.tBodies[0];
    const fresh = document.createElement("tbody");
    for (const item of rows) {
      const tr = document.createElement("tr");
      build(tr, item);
      fresh.appendChild(tr);
    }
    table.replaceChild(fresh, body);
  }

  function percent(ratio) {
    return ratio === null || ratio === undefined ? "–" : (ratio * 100).toFixed(1) + " %";
  }

  // ---------------------------------------------------------------- sign in and out

  function showLogin(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer !== null) clearTimeout(timer);
    timer = null;
    $("console").hidden = true;
    $("login").hidden = false;
    $("logout").hidden = true;
    $("status").textContent = "not signed in";
    $("login-error").textContent = message || "";
  }

  // This page was served for the session cookie, but the tab has no token (a new tab, or
  // the token was refused since): ask for it again; signing in renews the cookie too.
  async function signIn(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    try {
      const response = await call("POST", "/admin/console/session", undefined, "same-origin");
      if (!response.ok) throw new Error("sign-in failed: " + response.status);
    } catch (err) {
      showLogin(err instanceof Unauthorized ? "That token was refused." : String(err.message));
      return;
    }
    start();
  }

  // Sign out: the server clears the cookie (the page then answers the sign-in form), and
  // the tab forgets the token.
  async function signOut() {
    showLogin("");
    try {
      await fetch("/console/logout", { method: "POST", cache: "no-store", credentials: "same-origin" });
    } finally {
      window.location.replace("/");
    }
  }

  function start() {
    $("login").hidden = true;
    $("console").hidden = false;
    $("logout").hidden = false;
    $("status").textContent = "signed in";
    refresh();
  }

  // ---------------------------------------------------------------- the figures

  async function refresh() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    try {
      const summary = await getJson("/admin/console/summary");
      refreshMs = Math.max(500, (summary.refresh_seconds || 2) * 1000);
      showSummary(summary);
      await Promise.all([
        showChart("requests"),
        showChart("errors"),
        showChart("latency"),
        showAudit(),
        showWebhooks(summary),
      ]);
      $("updated").textContent = summary.now;
      $("status").textContent = "signed in";
    } catch (err) {
      if (err instanceof Unauthorized) {
        showLogin("The token was refused (rotated?): sign in again.");
        return;
      }
      $("status").textContent = "update failed: " + err.message;
    }
    timer = setTimeout(refresh, refreshMs);
  }

  function showSummary(summary) {
    $("window").textContent = Math.round(summary.window_seconds / 60) + " min";
    fillBody($("teams"), summary.teams, (tr, team) => {
      tr.dataset.team = team.name;
      cell(tr, team.name);
      cell(tr, team.requests, "num requests");
      cell(tr, team.requests_per_second, "num rate");
      cell(tr, team.errors, "num errors");
      cell(tr, percent(team.error_ratio), "num");
      cell(tr, team.p50_ms, "num p50");
      cell(tr, team.p99_ms, "num p99");
    });
    const cache = summary.cache;
    $("cache-hit-ratio").textContent = percent(cache.hit_ratio);
    $("cache-from").textContent = text(cache.from_cache);
    $("cache-lookups").textContent = text(cache.lookups);
    $("cache-bytes").textContent = text(cache.bytes_from_cache);
    fillBody($("upstream-errors"), Object.entries(summary.upstream_errors), (tr, entry) => {
      cell(tr, entry[0]);
      cell(tr, entry[1], "num");
    });
    fillBody($("rate-limits"), summary.teams, (tr, team) => {
      tr.dataset.team = team.name;
      cell(tr, team.name);
      cell(tr, bucket(team.rate_limit, "read"), "read");
      cell(tr, bucket(team.rate_limit, "write"), "write");
      const account = team.account_remaining;
      cell(tr, account ? account.remaining + " (at " + account.at + ")" : "–", "account");
      cell(tr, team.refusals, "num refusals");
      const last = team.last_refusals[0];
      cell(tr, last ? last.at + " " + text(last.limit) : "–");
    });
    const select = $("filter-team");
    const chosen = select.value;
    const names = summary.teams.map((t) => t.name);
    const have = Array.from(select.options).slice(1).map((o) => o.value);
    if (names.join("\n") !== have.join("\n")) {
      while (select.options.length > 1) select.remove(1);
      for (const name of names) {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        select.appendChild(option);
      }
      select.value = names.includes(chosen) ? chosen : "";
    }
  }

  function bucket(rateLimit, name) {
    if (!rateLimit || !rateLimit.limited) return "not limited";
    const found = (rateLimit.limits || []).find((l) => l.name === name);
    if (!found) return "not limited";
    const left = found.remaining === undefined ? "shared" : found.remaining;
    return left + " / " + found.burst + " (" + found.rate + "/s)";
  }

  // An SVG document from the gateway, parsed as SVG (never as HTML) and stripped of
  // anything that could run: scripts, foreign objects, event attributes, links.
  function cleanSvg(source) {
    const doc = new DOMParser().parseFromString(source, "image/svg+xml");
    const root = doc.documentElement;
    if (root.namespaceURI !== SVG_NS || root.localName !== "svg") return null;
    for (const el of Array.from(root.querySelectorAll("*"))) {
      const tag = el.localName.toLowerCase();
      if (el.namespaceURI !== SVG_NS || tag === "script" || tag === "foreignobject" ||
          tag === "a" || tag === "use" || tag === "image") {
        el.remove();
        continue;
      }
      for (const attr of Array.from(el.attributes)) {
        const name = attr.name.toLowerCase();
        if (name.startsWith("on") || name.includes("href") || name === "style") {
          el.removeAttribute(attr.name);
        }
      }
    }
    return document.importNode(root, true);
  }

  async function showChart(name) {
    const response = await call("GET", "/admin/console/charts/" + name + ".svg");
    if (!response.ok) throw new Error("chart " + name + ": " + response.status);
    const svg = cleanSvg(await response.text());
    const box = $("chart-" + name);
    if (svg === null) {
      box.textContent = "(chart unavailable)";
      return;
    }
    box.replaceChildren(svg);
  }

  async function showAudit() {
    const params = new URLSearchParams();
    const team = $("filter-team").value;
    const status = $("filter-status").value.trim();
    const object = $("filter-object").value.trim();
    if (team) params.set("team", team);
    if (status) params.set("status", status);
    if (object) params.set("object", object);
    params.set("limit", "100");
    const table = $("audit");
    let lines;
    try {
      lines = (await getJson("/admin/console/audit?" + params.toString())).data;
      table.dataset.error = "";
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      table.dataset.error = err.message;
      $("status").textContent = "audit filter: " + err.message;
      return;
    }
    table.dataset.filter = params.toString();
    fillBody(table, lines, (tr, line) => {
      tr.dataset.requestId = text(line.request_id);
      cell(tr, line.timestamp);
      cell(tr, line.team, "team");
      cell(tr, line.method);
      cell(tr, line.path, "path");
      cell(tr, line.status, "status");
      cell(tr, line.cache, "cache");
      cell(tr, line.rate_limit);
      cell(tr, line.duration_ms, "num");
      cell(tr, line.error);
      cell(tr, line.request_id);
      const td = document.createElement("td");
      if (typeof line.object_id === "string" && line.object_id) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "purge-row";
        button.textContent = "purge";
        button.dataset.object = line.object_id;
        td.appendChild(button);
      }
      tr.appendChild(td);
    });
  }

  async function showWebhooks(summary) {
    const section = $("webhooks");
    if (!summary.webhooks || webhooksSeen === false) {
      section.hidden = true;
      return;
    }
    const subscriptions = await call("GET", "/admin/webhooks/subscriptions");
    if (subscriptions.status === 404) {  // the plugin is loaded but not enabled
      webhooksSeen = false;
      section.hidden = true;
      return;
    }
    webhooksSeen = true;
    section.hidden = false;
    const subs = (await subscriptions.json()).data;
    const pending = (await getJson("/admin/webhooks/deliveries?status=pending&limit=1000")).data;
    const dead = (await getJson("/admin/webhooks/dead_letters?limit=100")).data;
    $("webhook-pending").textContent = pending.length >= 1000 ? "1000+" : String(pending.length);
    const oldest = pending.reduce((min, d) => (min === null || d.created < min ? d.created : min), null);
    $("webhook-oldest").textContent = oldest === null ? "–" :
      new Date(oldest * 1000).toISOString() + " (" + Math.round(Date.now() / 1000 - oldest) + " s ago)";
    $("webhook-dead-count").textContent = dead.length >= 100 ? "100+" : String(dead.length);
    fillBody($("webhook-subscriptions"), subs, (tr, sub) => {
      cell(tr, sub.name);
      cell(tr, sub.team);
      cell(tr, sub.paused);
      cell(tr, sub.circuit_open);
      cell(tr, sub.in_flight, "num");
    });
    fillBody($("webhook-dead"), dead, (tr, d) => {
      cell(tr, d.event_id);
      cell(tr, d.subscription);
      cell(tr, d.attempts, "num");
      cell(tr, d.last_error);
      const td = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "replay";
      button.textContent = "replay";
      button.dataset.event = text(d.event_id);
      button.dataset.subscription = text(d.subscription);
      td.appendChild(button);
      tr.appendChild(td);
    });
  }

  // ---------------------------------------------------------------- actions (POST, token)

  async function purge(objectId) {
    const result = $("purge-result");
    result.className = "";
    result.textContent = "purging " + objectId + "…";
    try {
      const response = await call("POST", "/admin/cache/purge", { object_id: objectId });
      const data = await response.json();
      if (!response.ok) {
        result.className = "error";
        result.textContent = data.error ? data.error.message : String(response.status);
        return;
      }
      result.className = "ok";
      result.dataset.object = data.object_id;
      result.textContent = "purged " + data.purged + " cached answers of " + data.object_id;
    } catch (err) {
      if (err instanceof Unauthorized) return showLogin("The token was refused.");
      result.className = "error";
      result.textContent = err.message;
    }
  }

  async function replay(eventId, subscription) {
    const result = $("replay-result");
    try {
      const response = await call("POST", "/admin/webhooks/replay",
        { event_id: eventId, subscription });
      const data = await response.json();
      result.className = response.ok ? "ok" : "error";
      result.textContent = response.ok ?
        "replay queued: " + data.event_id + " to " + data.subscription :
        (data.error ? data.error.message : String(response.status));
    } catch (err) {
      if (err instanceof Unauthorized) return showLogin("The token was refused.");
      result.className = "error";
      result.textContent = err.message;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", signOut);
    $("purge-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("purge-object").value.trim();
      if (value) purge(value);
    });
    $("audit-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      refresh();
    });
    $("audit").addEventListener("click", (event) => {
      const button = event.target.closest("button.purge-row");
      if (button) purge(button.dataset.object);
    });
    $("webhook-dead").addEventListener("click", (event) => {
      const button = event.target.closest("button.replay");
      if (button) replay(button.dataset.event, button.dataset.subscription);
    });
    if (token()) start(); else showLogin("");
  });
})();
