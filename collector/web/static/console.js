// The console's only script: the facts tree's search and a live snapshot's progress.
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

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-tree]").forEach((input) => {
    input.addEventListener("input", () => searchTree(input));
  });
  const progress = document.getElementById("progress");
  if (progress) followSnapshot(progress);
});
