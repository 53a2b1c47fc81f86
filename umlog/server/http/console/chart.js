// Live throughput: records per second per topic, drawn on a canvas (no chart library).
import { api } from "./api.js";
import { fmt, h } from "./util.js";

const COLORS = ["#2457c5", "#c0392b", "#1b7a3d", "#8e44ad", "#d68910", "#117a8b", "#7f8c8d", "#b03a75"];
const TOP = 8;

export async function view(ctx) {
  const canvas = h("canvas", { id: "throughput" });
  const legend = h("div", { class: "legend", id: "legend" });
  const draw = (data) => {
    const series = Object.entries(data.series)
      .map(([name, pts]) => ({ name, pts, last: pts.length ? pts[pts.length - 1][1] : 0, peak: Math.max(0, ...pts.map((p) => p[1])) }))
      .filter((s) => s.peak > 0).sort((a, b) => b.peak - a.peak).slice(0, TOP);
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, hgt = canvas.clientHeight;
    canvas.width = w * dpr; canvas.height = hgt * dpr;
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, hgt);
    const pad = { l: 60, r: 10, t: 10, b: 24 };
    const now = Date.now() / 1000, span = 300;
    const ymax = Math.max(1, ...series.map((s) => s.peak)) * 1.1;
    const x = (t) => pad.l + ((t - (now - span)) / span) * (w - pad.l - pad.r);
    const y = (v) => hgt - pad.b - (v / ymax) * (hgt - pad.t - pad.b);
    g.strokeStyle = "#dde1ea"; g.fillStyle = "#6b7385"; g.font = "11px system-ui"; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4;
      g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
      g.fillText(fmt.int(Math.round(v)), 4, y(v) + 4);
    }
    for (let m = 0; m <= 5; m++) g.fillText(m ? `-${m} min` : "now", x(now - m * 60) - 14, hgt - 6);
    series.forEach((s, i) => {
      g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 2; g.beginPath();
      s.pts.forEach(([t, v], j) => (j ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
      g.stroke();
    });
    legend.replaceChildren(...(series.length ? series.map((s, i) => {
      const sw = h("span", { class: "swatch" });
      sw.style.background = COLORS[i % COLORS.length];
      return h("span", { "data-topic": s.name }, sw, `${s.name}: ${fmt.int(Math.round(s.last))}/s`);
    }) : [h("span", { class: "muted" }, "no records appended in the last five minutes")]));
  };
  const load = async () => draw(await api("/throughput"));
  ctx.every(1000, load);
  setTimeout(load, 0);
  return h("div", {}, h("h1", {}, "Throughput"), h("p", { class: "muted" }, "Records appended per second, per topic (the busiest eight), sampled from end offsets once a second."), canvas, legend);
}
