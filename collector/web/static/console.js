// The console's only script: the facts tree's search, a live snapshot's and a hunt's progress.
// No inline script anywhere (the Content-Security-Policy forbids it); no third party.
"use strict";

function searchTree(input) {
  const tree = document.getElementById(input.dataset.tree);
  if (!tree) return;
  const q = input.value.trim().toLowerCase();
  tree.querySelectorAll("li").forEach((li) => li.classList.remove("hidden"));
  if (!q) return;
  // Leaves first: a branch stays visible when any leaf under it matches (or its own name).
  const items = Array.from(tree.querySelectorAll("li")).reverse();
  for (const li of items) {
    const own = li.querySelector(":scope > .leaf, :scope > details > summary");
    const match = own && own.textContent.toLowerCase().includes(q);
    const child = li.querySelector(":scope > details > ul > li:not(.hidden)");
    if (match || child) {
      const d = li.querySelector(":scope > details");
      if (d && child) d.open = true;
    } else {
      li.classList.add("hidden");
    }
  }
}

const FINAL = new Set(["done", "denied", "failed", "expired", "offline", "timeout", "refused"]);

function followSnapshot(list) {
  const url = list.dataset.events;
  const result = document.getElementById("result");
  let shown = list.children.length;
  async function poll() {
    let data;
    try {
      const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!r.ok) return;
      data = await r.json();
    } catch (e) {
      setTimeout(poll, 2000);
      return;
    }
    for (const e of data.events.slice(shown)) {
      const li = document.createElement("li");
      li.className = "state-" + e.state;
      const strong = document.createElement("strong");
      strong.textContent = e.state;
      li.append(strong, " " + (e.at || "") + " " + (e.detail || ""));
      list.append(li);
      if (e.bundle_id && /^[0-9a-f]{32}$/.test(e.bundle_id)) {
        const a = document.createElement("a");
        a.href = "/bundles/" + e.bundle_id;
        a.textContent = "Open the bundle";
        result.replaceChildren(a);
      }
    }
    shown = data.events.length;
    if (data.final) {
      const done = data.events[data.events.length - 1];
      if (done && done.state === "done" && done.bundle_id) window.location.assign("/bundles/" + done.bundle_id);
      return;
    }
    setTimeout(poll, 700);
  }
  const last = list.lastElementChild;
  if (!last || !FINAL.has(last.className.replace("state-", ""))) poll();
}

// A hunt's hosts, polled from /hunts/<id>/status (the Hunt service's status read with the
// API's own check; audited when refused, the view itself once): every 4 s while a host is collecting, every 30 s while hosts only wait for
// their agents, and not after 30 minutes (the page says to reload).
const MOVING = new Set(["delivered", "collecting", "uploading"]);

function followHunt(table) {
  const url = table.dataset.status;
  const counts = document.getElementById("hunt-counts");
  const refresh = document.getElementById("hunt-refresh");
  const started = Date.now();
  const doneAtLoad = table.querySelectorAll("td.state-done").length;
  function cell(row, name, text) {
    const td = row.querySelector("td." + name);
    if (td && td.textContent !== text) td.textContent = text;
    return td;
  }
  async function poll() {
    let data;
    try {
      const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!r.ok) return;
      data = await r.json();
    } catch (e) {
      setTimeout(poll, 5000);
      return;
    }
    let done = 0;
    let moving = false;
    for (const h of data.hosts) {
      const row = table.querySelector('tr[data-request="' + CSS.escape(h.request_id) + '"]');
      if (!row) continue;
      const state = cell(row, "state", h.state);
      if (state) state.className = "state state-" + h.state;
      cell(row, "detail", h.detail || "");
      cell(row, "updated", h.updated || "");
      const bundle = row.querySelector("td.bundle");
      if (bundle && h.bundle_id && /^[0-9a-f]{32}$/.test(h.bundle_id) && !bundle.firstChild) {
        const a = document.createElement("a");
        a.className = "mono";
        a.href = "/bundles/" + h.bundle_id;
        a.textContent = h.bundle_id.slice(0, 12) + "\u2026";
        bundle.append(a);
      }
      if (h.state === "done") done += 1;
      if (MOVING.has(h.state)) moving = true;
    }
    if (counts) {
      const spans = Object.keys(data.counts).sort().map((k) => {
        const span = document.createElement("span");
        span.className = "label state-" + k;
        span.textContent = k + ": " + data.counts[k];
        return span;
      });
      counts.replaceChildren(...spans.flatMap((s) => [s, " "]));
    }
    if (refresh && done > doneAtLoad) refresh.hidden = false;
    if (!data.active) return;
    if (Date.now() - started > 30 * 60 * 1000) {
      if (refresh) refresh.hidden = false;
      return;
    }
    setTimeout(poll, moving ? 4000 : 30000);
  }
  setTimeout(poll, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-tree]").forEach((input) => {
    input.addEventListener("input", () => searchTree(input));
  });
  const progress = document.getElementById("progress");
  if (progress) followSnapshot(progress);
  const hunt = document.getElementById("hunt-hosts");
  if (hunt && hunt.dataset.active) followHunt(hunt);
});
