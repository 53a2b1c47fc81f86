// The console's router: #/page/arg -> a view that renders into <main>. A view may
// register timers through ctx.every(); they stop when the page changes.
import { api } from "./api.js";
import { h, toast } from "./util.js";
import * as topics from "./topics.js";
import * as messages from "./messages.js";
import * as groups from "./groups.js";
import * as deliveries from "./deliveries.js";
import * as chart from "./chart.js";

const routes = {
  topics: (ctx, arg) => (arg ? topics.detail(ctx, arg) : topics.list(ctx)),
  messages: (ctx, arg) => messages.view(ctx, arg),
  groups: (ctx, arg) => (arg ? groups.detail(ctx, arg) : groups.list(ctx)),
  shares: (ctx, arg) => deliveries.shares(ctx, arg),
  "dead-letters": (ctx, arg) => deliveries.deadLetters(ctx, arg),
  webhooks: (ctx) => deliveries.webhooks(ctx),
  mqtt: (ctx) => deliveries.mqtt(ctx),
  throughput: (ctx) => chart.view(ctx),
};

let current = null;

function context() {
  const timers = [];
  return {
    alive: true,
    every(ms, fn) {
      let busy = false;
      const tick = async () => {
        if (busy || !this.alive || document.hidden) return;
        busy = true;
        try { await fn(); } catch (e) { console.warn(e); } finally { busy = false; }
      };
      timers.push(setInterval(tick, ms));
    },
    stop() { this.alive = false; timers.forEach(clearInterval); },
  };
}

async function route() {
  const [page = "topics", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  if (current) current.stop();
  current = context();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "muted" }, "loading…"));
  const view = routes[page] || routes.topics;
  try {
    const el = await view(current, arg);
    if (current.alive) main.replaceChildren(el);
  } catch (e) {
    main.replaceChildren(h("p", { class: "bad" }, e.message));
    toast(e.message, true);
  }
}

async function status() {
  try {
    const o = await api("/overview");
    const disk = o.disk ? ` · disk ${Math.round((100 * (o.disk.total - o.disk.free)) / o.disk.total)}% used` : "";
    document.getElementById("status").textContent =
      `umlog ${o.version} · ${o.doors.map((d) => d.name).join(", ")} · ${o.connections} connections${disk}`;
  } catch {
    document.getElementById("status").textContent = "server unreachable";
  }
}

window.addEventListener("hashchange", route);
route();
status();
setInterval(status, 10000);
