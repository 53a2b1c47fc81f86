// Share groups, dead letters (why each died; redrive one or all), webhooks, MQTT sessions.
import { api, enc } from "./api.js";
import { confirmDialog, fmt, h, sortableTable, toast } from "./util.js";

export async function shares(ctx, name) {
  if (name) {
    const g = await api(`/share-groups/${enc(name)}`);
    const parts = sortableTable([
      { title: "Topic", get: (r) => r.topic },
      { title: "Partition", get: (r) => r.partition, num: true },
      { title: "Start", get: (r) => r.start_offset, num: true },
      { title: "Fetched", get: (r) => r.fetched, num: true },
      { title: "End", get: (r) => r.end_offset, num: true },
      { title: "In flight", get: (r) => r.in_flight, num: true },
      { title: "Unacked", get: (r) => r.unacked, num: true },
      { title: "Archived", get: (r) => r.archived, num: true },
      { title: "Delivery counts", get: (r) => Object.entries(r.delivery_counts).map(([c, n]) => `${c}×: ${n}`).join(", ") },
      { title: "Oldest unacked", get: (r) => r.oldest_unacked_age_ms ?? -1, render: (r) => (r.oldest_unacked_age_ms === null ? "" : fmt.secs(r.oldest_unacked_age_ms / 1000)), num: true },
    ], { id: "share-partitions" });
    parts.update(g.partitions);
    const members = sortableTable([
      { title: "Member", get: (m) => m.member_id }, { title: "Client", get: (m) => m.client_id },
      { title: "Host", get: (m) => m.host }, { title: "Epoch", get: (m) => m.epoch, num: true },
      { title: "Assignment", get: (m) => Object.entries(m.assignment).map(([t, ps]) => `${t}[${ps.join(",")}]`).join(" ") },
    ]);
    members.update(g.members);
    return h("div", {}, h("h1", {}, "Share group ", h("span", { class: "mono" }, name)),
      h("p", {}, `${fmt.int(g.unacked)} unacked · ${fmt.int(g.in_flight)} in flight`),
      h("section", { class: "card" }, h("h2", {}, "Members"), members), h("section", { class: "card" }, h("h2", {}, "Partitions"), parts));
  }
  const table = sortableTable([
    { title: "Share group", get: (g) => g.group, render: (g) => h("a", { href: `#/shares/${enc(g.group)}` }, g.group) },
    { title: "Topics", get: (g) => g.topics.join(", ") },
    { title: "Members", get: (g) => g.members, num: true },
    { title: "Unacked", get: (g) => g.unacked, render: (g) => fmt.int(g.unacked), num: true },
    { title: "Oldest unacked", get: (g) => g.oldest_unacked_age_ms ?? -1, render: (g) => (g.oldest_unacked_age_ms === null ? "" : fmt.secs(g.oldest_unacked_age_ms / 1000)), num: true },
  ], { id: "share-groups" });
  const load = async () => table.update(await api("/share-groups"));
  await load();
  ctx.every(3000, load);
  return h("div", {}, h("h1", {}, "Share groups"), table);
}

export async function deadLetters(ctx, topic) {
  const topics = await api("/dead-letters");
  const list = sortableTable([
    { title: "Dead-letter topic", get: (t) => t.topic, render: (t) => h("a", { href: `#/dead-letters/${enc(t.topic)}` }, t.topic) },
    { title: "From", get: (t) => t.original_topics.join(", ") },
    { title: "Records", get: (t) => t.records, num: true },
    { title: "Not redriven", get: (t) => t.not_redriven, num: true },
    { title: "Found by", get: (t) => t.found_by },
  ], { id: "dlq-topics" });
  list.update(topics);
  const root = h("div", {}, h("h1", {}, "Dead letters"), list);
  if (!topic) return root;

  const tbody = h("tbody");
  const table = h("table", { id: "dead-letters" }, h("thead", {}, h("tr", {},
    ["Partition", "Offset", "Died", "Original", "Why", "Deliveries", "Group", "Key", "Value", ""].map((x) => h("th", {}, x)))), tbody);
  const summary = h("p", { class: "muted", id: "dlq-summary" });
  const load = async () => {
    const d = await api(`/dead-letters/${enc(topic)}`, { query: { limit: 200 } });
    const nextOf = Object.fromEntries(d.partitions.map((p) => [p.partition, p.next_to_redrive]));
    const waiting = d.dead_letters.filter((x) => !x.redriven).length;
    summary.textContent = `${d.dead_letters.length} shown · ${waiting} not redriven`;
    tbody.replaceChildren(...d.dead_letters.map((x) => h("tr", { "data-offset": x.offset, "data-partition": x.partition },
      h("td", { class: "num" }, x.partition), h("td", { class: "num" }, x.offset), h("td", {}, fmt.time(x.timestamp)),
      h("td", { class: "mono" }, x.original_topic ? `${x.original_topic}-${x.original_partition ?? "?"}@${x.original_offset ?? "?"}` : "(unknown)"),
      h("td", { class: "why" }, x.reason || ""), h("td", { class: "num" }, x.delivery_count ?? ""), h("td", {}, x.group || ""),
      h("td", { class: "mono cell" }, x.key ?? ""), h("td", { class: "mono cell" }, x.value ?? "(null)"),
      h("td", {}, x.redriven ? h("span", { class: "badge ok" }, "redriven")
        : nextOf[x.partition] === x.offset ? h("button", { class: "secondary redrive-one", onclick: () => redrive({ partition: x.partition, offset: x.offset }, `Redrive ${topic}-${x.partition}@${x.offset} to ${x.original_topic}?`) }, "Redrive")
          : h("span", { class: "muted" }, "waiting")))));
    if (!d.dead_letters.length) tbody.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "no dead letters")));
  };
  const redrive = async (body, question) => {
    if (!(await confirmDialog(question, "Redrive"))) return;
    try {
      const r = await api(`/dead-letters/${enc(topic)}/redrive`, { method: "POST", body });
      toast(`redriven: ${r.appended} appended, ${r.already_there} already there, ${r.skipped} skipped`);
      await load();
    } catch (e) { toast(e.message, true); }
  };
  await load();
  ctx.every(5000, load);
  root.append(h("section", { class: "card" }, h("h2", {}, "Topic ", h("span", { class: "mono" }, topic)), summary,
    h("div", { class: "row" }, h("button", { class: "danger", id: "redrive-all", onclick: () => redrive({}, `Redrive every dead letter of ${topic} not redriven yet to its original topic?`) }, "Redrive all")),
    table));
  return root;
}

export async function webhooks(ctx) {
  const table = sortableTable([
    { title: "Webhook", get: (w) => w.name }, { title: "Topic", get: (w) => w.topic }, { title: "URL", get: (w) => w.url },
    { title: "Running", get: (w) => (w.running ? "yes" : "no") },
    { title: "Delivered", get: (w) => w.delivered, num: true }, { title: "Retried", get: (w) => w.retried, num: true },
    { title: "Dead-lettered", get: (w) => w.dead_lettered, num: true }, { title: "In flight", get: (w) => w.in_flight, num: true },
    { title: "Last error", get: (w) => w.last_error || "" },
  ], { id: "webhooks" });
  const load = async () => table.update(await api("/webhooks"));
  await load();
  ctx.every(3000, load);
  return h("div", {}, h("h1", {}, "Webhooks"), table);
}

export async function mqtt(ctx) {
  const table = sortableTable([
    { title: "Client id", get: (s) => s.client_id },
    { title: "Connected", get: (s) => (s.connected ? "yes" : "no") },
    { title: "Peer", get: (s) => s.peer || "" },
    { title: "Persistent", get: (s) => (s.persistent ? "yes" : "no") },
    { title: "Subscriptions", get: (s) => s.subscriptions.map((x) => `${x.filter} (QoS ${x.qos})`).join(", ") },
    { title: "In flight", get: (s) => s.in_flight, num: true },
    { title: "Gone for", get: (s) => s.gone_for_s ?? -1, render: (s) => (s.gone_for_s === null ? "" : fmt.secs(s.gone_for_s)), num: true },
  ], { id: "mqtt-sessions" });
  try {
    table.update(await api("/mqtt/sessions"));
  } catch (e) {
    if (e.status === 404) return h("div", {}, h("h1", {}, "MQTT sessions"), h("p", { class: "muted" }, e.message));
    throw e;
  }
  ctx.every(3000, async () => table.update(await api("/mqtt/sessions")));
  return h("div", {}, h("h1", {}, "MQTT sessions"), table);
}
