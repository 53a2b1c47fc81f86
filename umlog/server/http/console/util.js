// DOM and formatting helpers. Text always goes in through textContent, never as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const fmt = {
  int: (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString("en-US")),
  bytes(n) {
    if (n === null || n === undefined) return "";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  },
  secs(s) {
    if (!s) return "0 s";
    if (s < 120) return `${s.toFixed(1)} s`;
    if (s < 7200) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  },
  time: (ms) => (ms === null || ms === undefined || ms < 0 ? "" : new Date(ms).toISOString().replace("T", " ").replace("Z", "")),
};

export function toast(message, error = false) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.className = error ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, error ? 8000 : 3500);
}

// A modal confirmation (a <dialog>): resolves true when confirmed.
export function confirmDialog(text, ok = "Confirm") {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.returnValue = "";
    d.showModal();
  });
}

// A table whose columns sort on click; rows re-render in place (live refresh keeps the sort).
export function sortableTable(columns, { onRow, key, id } = {}) {
  const state = { col: null, dir: 1, rows: [] };
  const tbody = h("tbody");
  const ths = columns.map((c, i) => h("th", {
    class: ["sortable", c.num ? "num" : ""].join(" "),
    onclick: () => { state.dir = state.col === i ? -state.dir : (c.num ? -1 : 1); state.col = i; render(); },
  }, c.title));
  const table = h("table", { id }, h("thead", {}, h("tr", {}, ths)), tbody);
  function render() {
    ths.forEach((th, i) => th.classList.toggle("sorted-asc", state.col === i && state.dir === 1));
    ths.forEach((th, i) => th.classList.toggle("sorted-desc", state.col === i && state.dir === -1));
    let rows = state.rows.slice();
    if (state.col !== null) {
      const get = columns[state.col].sort || columns[state.col].get;
      rows.sort((a, b) => { const x = get(a), y = get(b); return (x < y ? -1 : x > y ? 1 : 0) * state.dir; });
    }
    tbody.replaceChildren(...rows.map((r) => {
      const tr = h("tr", { class: onRow ? "clickable" : "", "data-key": key ? key(r) : null, onclick: onRow ? () => onRow(r) : null },
        columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.render ? c.render(r) : c.get(r))));
      return tr;
    }));
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "none")));
  }
  table.update = (rows) => { state.rows = rows; render(); };
  return table;
}

export function field(label, input) { return h("label", {}, label, input); }

export function parseLines(text) {
  // "key=value" lines to an object (blank lines and # comments skipped)
  const out = {};
  for (const line of text.split("\n")) {
    const s = line.trim();
    if (!s || s.startsWith("#")) continue;
    const i = s.indexOf("=");
    if (i < 1) throw new Error(`not key=value: ${s}`);
    out[s.slice(0, i).trim()] = s.slice(i + 1).trim();
  }
  return out;
}
