// Metrics: the last hour from /api/metrics/history, drawn on canvases (no chart library).
"use strict";

(() => {
  const { api, $ } = AI;
  const COLORS = ["#1f6feb", "#d29922", "#cf222e"];
  const SPAN_S = 3600; // the x axis: the last hour, ending now

  function draw(canvas, points, series) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    const style = getComputedStyle(document.body);
    g.fillStyle = style.color;
    g.font = "11px system-ui, sans-serif";
    const values = points.flatMap((p) => series.map((s) => p[s] ?? 0));
    const top = Math.max(1, ...values);
    const left = 36, bottom = height - 18, right = width - 6;
    g.strokeStyle = "rgba(128,128,128,.35)";
    g.beginPath(); g.moveTo(left, 6); g.lineTo(left, bottom); g.lineTo(right, bottom); g.stroke();
    g.fillText(String(Math.round(top)), 2, 14);
    g.fillText("0", 2, bottom);
    g.fillText("−60 min", left, height - 4);
    g.fillText("now", right - g.measureText("now").width, height - 4);
    const end = Date.now() / 1000;
    const x = (p) => left + Math.max(0, 1 - (end - p.t) / SPAN_S) * (right - left);
    const y = (v) => bottom - (v / top) * (bottom - 10);
    series.forEach((name, n) => {
      g.strokeStyle = COLORS[n];
      g.lineWidth = 1.6;
      g.beginPath();
      points.forEach((p, i) => (i ? g.lineTo(x(p), y(p[name] ?? 0)) : g.moveTo(x(p), y(p[name] ?? 0))));
      g.stroke();
      g.fillStyle = COLORS[n];
      points.forEach((p) => g.fillRect(x(p) - 1.5, y(p[name] ?? 0) - 1.5, 3, 3));
    });
  }

  async function refresh() {
    const history = await api("/api/metrics/history");
    $("interval").textContent = history.interval_s;
    $("metrics-empty").hidden = history.points.length > 0;
    const p = history.points;
    draw($("chart-requests"), p, ["requests"]);
    draw($("chart-errors"), p, ["errors"]);
    draw($("chart-latency"), p, ["p50_ms", "p95_ms", "p99_ms"]);
    draw($("chart-restarts"), p, ["restarts"]);
  }

  AI.start(() => AI.every(10000, refresh));
})();
