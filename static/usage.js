// Usage charts: every <canvas data-chart="kind" data-source="id"> is drawn with Chart.js from
// the JSON that the page embeds in <script id="id" type="application/json"> (json_script).
// Kinds: "requests" and "tokens" (stacked by model), "overview" (requests and tokens per day).
"use strict";

(() => {
  const PALETTE = [
    [37, 99, 235], [234, 88, 12], [22, 163, 74], [219, 39, 119], [124, 58, 237],
    [8, 145, 178], [202, 138, 4], [220, 38, 38], [71, 85, 105], [101, 163, 13],
  ];
  const number = new Intl.NumberFormat();

  const color = (index, alpha = 1) => {
    const [r, g, b] = PALETTE[index % PALETTE.length];
    return `rgba(${r}, ${g}, ${b}, ${alpha})`;
  };

  const sum = (arrays, length) => Array.from({ length }, (_, i) => arrays.reduce((total, values) => total + values[i], 0));

  const baseOptions = () => ({
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    interaction: { mode: "index", intersect: false },
    plugins: {
      legend: { position: "bottom", labels: { boxWidth: 12 } },
      tooltip: {
        callbacks: { label: (item) => `${item.dataset.label}: ${number.format(item.parsed.y)}` },
      },
    },
    scales: {
      x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12 }, grid: { display: false } },
      y: { stacked: true, beginAtZero: true, ticks: { callback: (value) => number.format(value) } },
    },
  });

  const builders = {
    requests(data) {
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: data.models.map((series, index) => ({
            label: series.model,
            data: series.requests,
            backgroundColor: color(index),
          })),
        },
        options: baseOptions(),
      };
    },

    // Two stacks per period, input and output, each stacked by model.
    tokens(data) {
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: data.models.flatMap((series, index) => [
            { label: `${series.model} · input`, data: series.input_tokens, stack: "input", backgroundColor: color(index) },
            {
              label: `${series.model} · output`,
              data: series.output_tokens,
              stack: "output",
              backgroundColor: color(index, 0.45),
              borderColor: color(index),
              borderWidth: 1,
            },
          ]),
        },
        options: baseOptions(),
      };
    },

    overview(data) {
      const length = data.labels.length;
      const options = baseOptions();
      options.scales = {
        x: { grid: { display: false }, ticks: { maxRotation: 0 } },
        y: { beginAtZero: true, title: { display: true, text: "Requests" }, ticks: options.scales.y.ticks },
        tokens: {
          position: "right",
          beginAtZero: true,
          title: { display: true, text: "Tokens" },
          grid: { drawOnChartArea: false },
          ticks: options.scales.y.ticks,
        },
      };
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: [
            { label: "Requests", data: sum(data.models.map((s) => s.requests), length), backgroundColor: color(0, 0.8), yAxisID: "y" },
            {
              type: "line",
              label: "Tokens",
              data: sum(data.models.flatMap((s) => [s.input_tokens, s.output_tokens]), length),
              borderColor: color(1),
              backgroundColor: color(1),
              tension: 0.25,
              yAxisID: "tokens",
            },
          ],
        },
        options,
      };
    },
  };

  for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
    const source = document.getElementById(canvas.dataset.source);
    const build = builders[canvas.dataset.chart];
    if (source && build) new Chart(canvas, build(JSON.parse(source.textContent)));
  }
})();
