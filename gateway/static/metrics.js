// Metrics: the last hour from /api/metrics/history, drawn on canvases (no chart library).
"use strict";

(() => {
  const { api, $ } = AI;
  const COLORS = ["#1f6feb", "#d29922", "#cf222e"];

  function draw(canvas, points, series) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight || 160;
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
    if (points.length) {
      g.fillText(new Date(points[0].t * 1000).toLocaleTimeString(), left, height - 4);
      const last = new Date(points[points.length - 1].t * 1000).toLocaleTimeString();
      g.fillText(last, right - g.measureText(last).width, height - 4);
    }
    const x = (i) => left + (points.length < 2 ? 0 : (i / (points.length - 1)) * (right - left));
    const y = (v) => bottom - (v / top) * (bottom - 10);
    series.forEach((name, n) => {
      g.strokeStyle = COLORS[n];
      g.lineWidth = 1.6;
      g.beginPath();
      points.forEach((p, i) => (i ? g.lineTo(x(i), y(p[name] ?? 0)) : g.moveTo(x(i), y(p[name] ?? 0))));
      g.stroke();
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
