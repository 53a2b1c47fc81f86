// Topics: the list, create, and one topic's partitions (offsets, sizes) and config.
import { api, enc } from "./api.js";
import { confirmDialog, field, fmt, h, parseLines, sortableTable, toast } from "./util.js";

export async function list(ctx) {
  const internal = h("input", { type: "checkbox", id: "show-internal" });
  const table = sortableTable([
    { title: "Topic", get: (t) => t.name, render: (t) => h("a", { href: `#/topics/${enc(t.name)}` }, t.name) },
    { title: "Partitions", get: (t) => t.partitions, num: true },
    { title: "Records", get: (t) => t.records, render: (t) => fmt.int(t.records), num: true },
    { title: "Size", get: (t) => t.bytes, render: (t) => fmt.bytes(t.bytes), num: true },
    { title: "", get: (t) => t.name, render: (t) => h("a", { href: `#/messages/${enc(t.name)}` }, "messages") },
  ], { id: "topics", key: (t) => t.name });
  const load = async () => table.update(await api("/topics", { query: { internal: internal.checked ? 1 : "" } }));
  internal.addEventListener("change", load);
  await load();
  ctx.every(5000, load);

  const name = h("input", { id: "new-topic-name", placeholder: "orders", required: true });
  const parts = h("input", { id: "new-topic-partitions", type: "number", min: 1, value: 1 });
  const cfg = h("textarea", { id: "new-topic-config", placeholder: "retention.ms=86400000\ncleanup.policy=delete" });
  const create = h("form", {
    class: "row",
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const t = await api("/topics", { method: "POST", body: { name: name.value.trim(), partitions: Number(parts.value), config: parseLines(cfg.value) } });
        toast(`created ${t.name}`);
        location.hash = `#/topics/${enc(t.name)}`;
      } catch (err) { toast(err.message, true); }
    },
  }, field("Name", name), field("Partitions", parts), field("Config (key=value lines)", cfg), h("button", { id: "create-topic" }, "Create topic"));

  return h("div", {}, h("h1", {}, "Topics"),
    h("section", { class: "card" }, h("h2", {}, "Create a topic"), create),
    h("div", { class: "row" }, h("label", { class: "row" }, internal, "internal topics")), table);
}

export async function detail(ctx, name) {
  const root = h("div");
  const parts = sortableTable([
    { title: "Partition", get: (p) => p.partition, num: true },
    { title: "Start offset", get: (p) => p.start_offset, render: (p) => fmt.int(p.start_offset), num: true },
    { title: "End offset", get: (p) => p.end_offset, render: (p) => fmt.int(p.end_offset), num: true },
    { title: "Records", get: (p) => p.records, render: (p) => fmt.int(p.records), num: true },
    { title: "Size", get: (p) => p.bytes, render: (p) => fmt.bytes(p.bytes), num: true },
    { title: "Segments", get: (p) => p.segments, num: true },
  ], { id: "partitions" });
  const cfgBody = h("tbody");
  let t = null;
  const load = async () => {
    t = await api(`/topics/${enc(name)}`);
    parts.update(t.partitions);
    cfgBody.replaceChildren(...Object.entries(t.config).sort().map(([k, v]) => {
      const over = k in t.overrides;
      return h("tr", {}, h("td", { class: "mono" }, k), h("td", { class: "mono" }, v === null ? "" : String(v)),
        h("td", {}, over ? h("button", { class: "secondary", onclick: () => change({ [k]: null }) }, "reset to default") : h("span", { class: "muted" }, "default")));
    }));
    partsInput.value = t.partitions.length;
  };
  const change = async (config) => {
    try { await api(`/topics/${enc(name)}`, { method: "PATCH", body: { config } }); toast("config changed"); await load(); } catch (e) { toast(e.message, true); }
  };
  const key = h("input", { id: "config-key", placeholder: "retention.ms" });
  const value = h("input", { id: "config-value", placeholder: "86400000" });
  const partsInput = h("input", { id: "partition-count", type: "number", min: 1 });
  await load();
  ctx.every(5000, load);
  root.append(
    h("h1", {}, "Topic ", h("span", { class: "mono" }, name), " ", h("a", { href: `#/messages/${enc(name)}` }, "→ messages")),
    h("section", { class: "card" }, h("h2", {}, "Partitions"), parts,
      h("form", { class: "row", onsubmit: async (e) => {
        e.preventDefault();
        try { await api(`/topics/${enc(name)}`, { method: "PATCH", body: { partitions: Number(partsInput.value) } }); toast("partitions added"); await load(); } catch (err) { toast(err.message, true); }
      } }, field("Partitions (add only)", partsInput), h("button", {}, "Set"))),
    h("section", { class: "card" }, h("h2", {}, "Configuration"),
      h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); change({ [key.value.trim()]: value.value.trim() }); } },
        field("Key", key), field("Value", value), h("button", { id: "config-set" }, "Set")),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, "Value"), h("th", {}, ""))), cfgBody)),
    h("section", { class: "card" }, h("h2", {}, "Delete"),
      h("button", { class: "danger", id: "delete-topic", onclick: async () => {
        if (!(await confirmDialog(`Delete topic ${name} and all its records? Committed offsets for it go too.`, "Delete"))) return;
        try { await api(`/topics/${enc(name)}`, { method: "DELETE" }); toast(`deleted ${name}`); location.hash = "#/topics"; } catch (e) { toast(e.message, true); }
      } }, "Delete topic")),
  );
  return root;
}
