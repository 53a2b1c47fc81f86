// The message browser: a page by partition and offset or time, search, one record in
// JSON, text or hex, and produce.
import { api, enc } from "./api.js";
import { field, fmt, h, parseLines, toast } from "./util.js";

function bytesOf(text, encoding) {
  if (text === null || text === undefined) return null;
  if (encoding === "base64") return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  return new TextEncoder().encode(text);
}

function hexdump(b) {
  if (!b) return "(null)";
  const lines = [];
  for (let i = 0; i < b.length; i += 16) {
    const row = Array.from(b.slice(i, i + 16));
    const hex = row.map((x) => x.toString(16).padStart(2, "0")).join(" ").padEnd(47);
    const txt = row.map((x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : ".")).join("");
    lines.push(`${i.toString(16).padStart(8, "0")}  ${hex}  ${txt}`);
  }
  return lines.join("\n") || "(empty)";
}

function render(rec, mode) {
  const b = bytesOf(rec.value, rec.encoding);
  if (mode === "hex") return hexdump(b);
  if (b === null) return "(null)";
  const text = rec.encoding === "base64" ? new TextDecoder("utf-8", { fatal: false }).decode(b) : rec.value;
  if (mode === "json") {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return "(not JSON)\n" + text; }
  }
  return text;
}

function preview(rec) {
  if (rec.value === null) return "(null)";
  return rec.encoding === "base64" ? `base64: ${rec.value}` : rec.value;
}

export async function view(ctx, topicArg) {
  const topics = await api("/topics");
  const topic = h("select", { id: "topic" }, topics.map((t) => h("option", { value: t.name }, t.name)));
  if (topicArg) topic.value = topicArg;
  const partition = h("select", { id: "partition" });
  const from = h("select", { id: "from" }, ["end", "beginning", "offset", "time"].map((x) => h("option", { value: x }, x)));
  const at = h("input", { id: "at", placeholder: "offset or 2026-01-01T00:00:00" });
  const limit = h("input", { id: "limit", type: "number", min: 1, max: 1000, value: 50 });
  const key = h("input", { id: "search-key", placeholder: "exact key" });
  const contains = h("input", { id: "search-contains", placeholder: "text in the value" });
  const jmes = h("input", { id: "search-jmespath", placeholder: "amount > `100`" });
  const scan = h("input", { id: "search-scan", type: "number", min: 1, value: 10000 });
  const info = h("p", { class: "muted", id: "result-info" });
  const tbody = h("tbody");
  const results = h("table", { id: "messages" }, h("thead", {}, h("tr", {}, ["Partition", "Offset", "Timestamp", "Key", "Value"].map((x) => h("th", {}, x)))), tbody);
  const detail = h("div", { id: "record" }, h("p", { class: "muted" }, "Select a record."));
  let mode = "json";
  let selected = null;
  let next = null; // what "more" reads: {kind, query}

  const fillPartitions = () => {
    const t = topics.find((x) => x.name === topic.value);
    partition.replaceChildren(h("option", { value: "" }, "all"), ...Array.from({ length: t ? t.partitions : 0 }, (_, i) => h("option", { value: i }, String(i))));
  };
  fillPartitions();

  const showDetail = () => {
    if (!selected) return;
    const r = selected;
    const tabs = h("div", { class: "row tabs" }, ["json", "text", "hex"].map((m) =>
      h("button", { class: mode === m ? "active" : "", id: `view-${m}`, onclick: () => { mode = m; showDetail(); } }, m.toUpperCase())));
    detail.replaceChildren(
      h("h2", {}, `${r.topic}-${r.partition} @ ${r.offset}`),
      h("p", { class: "muted" }, fmt.time(r.timestamp), " · key ", h("span", { class: "mono" }, r.key === null ? "(null)" : r.key)),
      tabs, h("pre", { id: "record-value" }, render(r, mode)),
      r.headers.length ? h("div", {}, h("h2", {}, "Headers"), h("pre", {}, r.headers.map(([k, v]) => `${k}: ${v && v.base64 ? "base64:" + v.base64 : v}`).join("\n"))) : null);
  };

  const show = (data, append) => {
    if (!append) tbody.replaceChildren();
    for (const r of data.records) {
      const tr = h("tr", { class: "clickable", onclick: () => { selected = r; tbody.querySelectorAll("tr").forEach((x) => x.classList.remove("selected")); tr.classList.add("selected"); showDetail(); } },
        h("td", { class: "num" }, r.partition), h("td", { class: "num" }, r.offset), h("td", {}, fmt.time(r.timestamp)),
        h("td", { class: "mono cell" }, r.key === null ? "" : r.key), h("td", { class: "mono cell" }, preview(r)));
      tbody.append(tr);
    }
    if (!tbody.children.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no records")));
  };

  const browseQuery = () => {
    const q = { partition: partition.value, limit: limit.value };
    if (from.value === "offset") q.offset = at.value;
    else if (from.value === "time") q.time = at.value;
    else q.from = from.value;
    return q;
  };

  const browse = async (query, append = false) => {
    const data = await api(`/topics/${enc(topic.value)}/messages`, { query });
    show(data, append);
    info.textContent = `${data.records.length} records · ` + data.partitions.map((p) => `p${p.partition} ${p.from}…${p.next} of ${p.start_offset}…${p.end_offset}`).join(", ");
    const more = data.partitions.length === 1 && data.partitions[0].next < data.partitions[0].end_offset;
    next = more ? { kind: "browse", query: { ...query, from: "", time: "", offset: data.partitions[0].next } } : null;
    moreBtn.disabled = !next;
  };

  const search = async (query, append = false) => {
    const data = await api(`/topics/${enc(topic.value)}/search`, { query });
    show(data, append);
    info.textContent = `${data.records.length} matches in ${fmt.int(data.scanned)} records scanned` + (data.done ? " · end of the topic" : " · more to scan");
    next = data.done ? null : { kind: "search", query: { ...query, after: data.after } };
    moreBtn.disabled = !next;
  };

  const guard = (fn) => async (e) => { if (e) e.preventDefault(); try { await fn(); } catch (err) { toast(err.message, true); } };
  const moreBtn = h("button", { class: "secondary", id: "more", disabled: true, onclick: guard(() => (next.kind === "browse" ? browse(next.query, true) : search(next.query, true))) }, "More");

  topic.addEventListener("change", () => { fillPartitions(); location.hash = `#/messages/${enc(topic.value)}`; });

  const pKey = h("input", { id: "produce-key" });
  const pValue = h("textarea", { id: "produce-value", placeholder: '{"id": 1}' });
  const pPart = h("input", { id: "produce-partition", type: "number", min: 0, placeholder: "by key" });
  const pHeaders = h("textarea", { id: "produce-headers", placeholder: "source=console" });
  const produce = h("form", { class: "row", onsubmit: guard(async () => {
    const body = { key: pKey.value === "" ? null : pKey.value, value: pValue.value, headers: Object.entries(parseLines(pHeaders.value)) };
    if (pPart.value !== "") body.partition = Number(pPart.value);
    const r = await api(`/topics/${enc(topic.value)}/messages`, { method: "POST", body });
    toast(`produced to ${r.topic}-${r.partition} @ ${r.offset}`);
    document.getElementById("produced").textContent = `last: partition ${r.partition}, offset ${r.offset}`;
  }) }, field("Key", pKey), field("Value", pValue), field("Partition", pPart), field("Headers (name=value lines)", pHeaders),
  h("button", { id: "produce" }, "Produce"), h("span", { class: "muted", id: "produced" }));

  if (topics.length) await browse(browseQuery());
  return h("div", {}, h("h1", {}, "Messages"),
    h("section", { class: "card" },
      h("form", { class: "row", onsubmit: guard(() => browse(browseQuery())) },
        field("Topic", topic), field("Partition", partition), field("From", from), field("Offset / time", at), field("Limit", limit),
        h("button", { id: "browse" }, "Browse")),
      h("form", { class: "row", onsubmit: guard(() => search({ partition: partition.value, key: key.value, contains: contains.value, jmespath: jmes.value, scan: scan.value, limit: limit.value })) },
        field("Key", key), field("Value contains", contains), field("JMESPath", jmes), field("Scan at most", scan),
        h("button", { id: "search" }, "Search"))),
    h("div", { class: "grid2" }, h("div", {}, info, results, h("div", { class: "row" }, moreBtn)), h("section", { class: "card" }, detail)),
    h("section", { class: "card" }, h("h2", {}, "Produce"), produce));
}
