// sortbox web: keyboard review, undo, training and rollback buttons. Plain JS, no build step.
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  let answer = {};
  try { answer = await response.json(); } catch (e) { answer = { error: await response.text() }; }
  return { ok: response.ok, status: response.status, answer };
}

function say(text) {
  const message = document.getElementById("message");
  if (message) message.textContent = text;
}

const queue = document.getElementById("queue");
if (queue) {
  const folder = queue.dataset.folder;
  const classes = queue.dataset.classes.split("|").filter(Boolean);
  const history = [];  // {cards: [{node, next}], from, to, members}
  let current = 0;
  let anchor = null;

  const cards = () => Array.from(queue.querySelectorAll(".card"));
  const selected = () => cards().filter((card) => card.classList.contains("selected"));

  function focus(index) {
    const all = cards();
    if (!all.length) {
      say("All done on this page.");
      if (Number(queue.dataset.pages) > 1) window.location.reload();
      return;
    }
    current = Math.max(0, Math.min(index, all.length - 1));
    all.forEach((card, n) => card.classList.toggle("current", n === current));
    all[current].focus({ preventScroll: false });
  }

  async function fileAs(target) {
    const all = cards();
    if (!all.length) return;
    const chosen = selected().length ? selected() : [all[current]];
    const members = chosen.flatMap((card) => card.dataset.members.split(" "));
    const { ok, answer } = await post("/api/file", { pictures: members, from: folder, to: target });
    const refused = new Set((answer.refused || []).map((r) => r.picture));
    const removed = [];
    for (const card of chosen) {
      const mine = card.dataset.members.split(" ");
      if (mine.every((m) => refused.has(m)) && !ok) continue;
      removed.push({ node: card, next: card.nextElementSibling });
      card.remove();
    }
    const filed = (answer.filed || []).map((f) => f.picture);
    if (filed.length) history.push({ cards: removed, from: folder, to: target, members: filed });
    if (answer.refused && answer.refused.length) {
      say(answer.refused.map((r) => r.error).join("; "));
      for (const card of chosen) {  // gone elsewhere (another tab, the file manager): drop it
        if (card.isConnected && card.dataset.members.split(" ").every((m) => refused.has(m))) card.remove();
      }
    } else {
      say(`Filed ${filed.length} as ${target}.`);
    }
    focus(current);
  }

  async function confirm() {  // audit: right where it is; counted, and a label
    const all = cards();
    if (!all.length) return;
    const chosen = selected().length ? selected() : [all[current]];
    const members = chosen.flatMap((card) => card.dataset.members.split(" "));
    const { answer } = await post("/api/confirm", { pictures: members, folder });
    for (const card of chosen) card.remove();
    const done = (answer.confirmed || []).length;
    say((answer.refused || []).length ? answer.refused.map((r) => r.error).join("; ")
      : `Confirmed ${done} as ${folder}.`);
    focus(current);
  }

  async function undo() {
    const last = history.pop();
    if (!last) { say("Nothing to undo."); return; }
    const { answer } = await post("/api/file", { pictures: last.members, from: last.to, to: last.from });
    if ((answer.refused || []).length) say(answer.refused.map((r) => r.error).join("; "));
    else say(`Undone: back in ${last.from}.`);
    for (const { node, next } of last.cards.reverse()) {
      node.classList.remove("selected");
      if (next && next.isConnected) queue.insertBefore(node, next); else queue.appendChild(node);
    }
    focus(cards().indexOf(last.cards[last.cards.length - 1].node));
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (/^[0-9]$/.test(key)) {
      const index = key === "0" ? 9 : Number(key) - 1;
      if (index < classes.length) fileAs(classes[index]);
    } else if (key === "s" || key === "ArrowRight" || key === "j") {
      focus(current + 1);
    } else if (key === "p" || key === "ArrowLeft" || key === "k") {
      focus(current - 1);
    } else if (key === "u") {
      undo();
    } else if (key === "x") {
      const card = cards()[current];
      if (card) { card.classList.toggle("selected"); anchor = current; }
    } else if (key === "r" && folder !== "needs_review") {
      fileAs("needs_review");
    } else if (key === "c" && folder !== "needs_review") {
      confirm();
    } else {
      return;
    }
    event.preventDefault();
  });

  queue.addEventListener("click", (event) => {
    const card = event.target.closest(".card");
    if (!card) return;
    const index = cards().indexOf(card);
    if (event.shiftKey && anchor !== null) {
      const [from, to] = [Math.min(anchor, index), Math.max(anchor, index)];
      cards().forEach((c, n) => { if (n >= from && n <= to) c.classList.add("selected"); });
    } else {
      card.classList.toggle("selected");
      anchor = index;
    }
    focus(index);
  });

  focus(0);
}

const train = document.getElementById("train");
if (train) {
  const output = document.getElementById("train-output");
  async function poll() {
    const response = await fetch("/api/train", { credentials: "same-origin" });
    const state = await response.json();
    output.textContent = state.output;
    train.disabled = state.running;
    if (state.running) setTimeout(poll, 2000);
  }
  train.addEventListener("click", async () => {
    const { ok, answer } = await post("/api/train", {});
    say(ok ? "Training started." : answer.error);
    poll();
  });
}

for (const button of document.querySelectorAll("button.rollback")) {
  button.addEventListener("click", async () => {
    const { ok, answer } = await post("/api/models/rollback", { version: button.dataset.version });
    say(ok ? `Now using ${answer.current}.` : answer.error);
    if (ok) setTimeout(() => window.location.reload(), 500);
  });
}
