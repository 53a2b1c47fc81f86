// Consumer groups: the list, one group's members and lag (live, sortable), and offset resets.
import { api, enc } from "./api.js";
import { confirmDialog, field, fmt, h, sortableTable, toast } from "./util.js";

export async function list(ctx) {
  const table = sortableTable([
    { title: "Group", get: (g) => g.group, render: (g) => h("a", { href: `#/groups/${enc(g.group)}` }, g.group) },
    { title: "State", get: (g) => g.state },
    { title: "Members", get: (g) => g.members, num: true },
    { title: "Topics", get: (g) => g.topics.join(", ") },
    { title: "Lag", get: (g) => g.lag, render: (g) => fmt.int(g.lag), num: true },
    { title: "Lag (time)", get: (g) => g.lag_seconds, render: (g) => fmt.secs(g.lag_seconds), num: true },
  ], { id: "groups", key: (g) => g.group });
  const load = async () => table.update(await api("/groups"));
  await load();
  ctx.every(2000, load);
  return h("div", {}, h("h1", {}, "Consumer groups"), table);
}

export async function detail(ctx, name) {
  const stateEl = h("span", { class: "badge", id: "group-state" });
  const members = sortableTable([
    { title: "Member", get: (m) => m.member_id, render: (m) => h("span", { class: "mono" }, m.member_id) },
    { title: "Kind", get: (m) => m.kind },
    { title: "Client", get: (m) => m.client_id },
    { title: "Host", get: (m) => m.host },
    { title: "Assignment", get: (m) => Object.entries(m.assignment).map(([t, ps]) => `${t}[${ps.join(",")}]`).join(" ") },
  ], { id: "members" });
  const offsets = sortableTable([
    { title: "Topic", get: (r) => r.topic },
    { title: "Partition", get: (r) => r.partition, num: true },
    { title: "Committed", get: (r) => r.committed, render: (r) => fmt.int(r.committed), num: true },
    { title: "End", get: (r) => r.end_offset, render: (r) => fmt.int(r.end_offset), num: true },
    { title: "Lag", get: (r) => r.lag, render: (r) => fmt.int(r.lag), num: true },
    { title: "Lag (time)", get: (r) => r.lag_seconds, render: (r) => fmt.secs(r.lag_seconds), num: true },
  ], { id: "lag", key: (r) => `${r.topic}-${r.partition}` });
  const total = h("span", { id: "total-lag" });
  let live = 0;
  const load = async () => {
    const g = await api(`/groups/${enc(name)}`);
    stateEl.textContent = g.state;
    stateEl.className = "badge " + (g.members.length ? "ok" : "");
    members.update(g.members);
    offsets.update(g.offsets);
    total.textContent = `total lag ${fmt.int(g.lag)}`;
    live = g.members.length;
    resetBtn.disabled = live > 0;
    resetNote.textContent = live ? "Offsets can be reset only while the group has no live members (stop its consumers)." : "";
  };

  const to = h("select", { id: "reset-to" }, ["earliest", "latest", "time", "offset"].map((x) => h("option", { value: x }, x)));
  const value = h("input", { id: "reset-value", placeholder: "offset or 2026-01-01T00:00:00Z" });
  const topic = h("input", { id: "reset-topic", placeholder: "all the group's topics" });
  const resetNote = h("p", { class: "muted", id: "reset-note" });
  const body = () => {
    const b = { to: to.value };
    if (to.value === "offset") b.offset = Number(value.value);
    if (to.value === "time") b.time = value.value;
    if (topic.value.trim()) b.topic = topic.value.trim();
    return b;
  };
  const resetBtn = h("button", { class: "danger", id: "reset", onclick: async (e) => {
    e.preventDefault();
    try {
      const plan = await api(`/groups/${enc(name)}/reset`, { method: "POST", body: { ...body(), dry_run: true } });
      const lines = plan.offsets.map((o) => `${o.topic}-${o.partition}: ${o.before ?? "none"} → ${o.offset}`).join("; ");
      if (!(await confirmDialog(`Reset group ${name} to ${to.value}? ${lines}`, "Reset offsets"))) return;
      await api(`/groups/${enc(name)}/reset`, { method: "POST", body: body() });
      toast(`group ${name} reset to ${to.value}`);
      await load();
    } catch (err) { toast(err.message, true); }
  } }, "Reset offsets…");

  await load();
  ctx.every(2000, load);
  return h("div", {}, h("h1", {}, "Group ", h("span", { class: "mono" }, name), " ", stateEl),
    h("section", { class: "card" }, h("h2", {}, "Members"), members),
    h("section", { class: "card" }, h("h2", {}, "Lag ", total), offsets),
    h("section", { class: "card" }, h("h2", {}, "Reset offsets"),
      h("form", { class: "row" }, field("To", to), field("Offset / time", value), field("Topic", topic), resetBtn), resetNote));
}
