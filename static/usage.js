// Usage charts: every <canvas data-chart="kind" data-source="id"> is drawn with Chart.js from
// the JSON that the page embeds in <script id="id" type="application/json"> (json_script).
// Kinds: "requests" and "tokens" (stacked by model), "cost" (stacked by model, amounts in the
// currency's minor unit, shown in its major unit as the server's money filter writes them: "12.34 USD"),
// "overview" (requests by model and all tokens per day), "errors" (refusals and other errors stacked,
// each in its fixed colour). Each model comes with its colour (usage/colors.py), the same on every
// page; an element with data-color (a legend swatch) is painted with it.
"use strict";

(() => {
  const number = new Intl.NumberFormat();
  const TOKENS_COLOR = "#334155";

  // "#rrggbb" at an opacity, for the output half of a token stack.
  const faded = (hex, alpha) => {
    const [r, g, b] = [1, 3, 5].map((at) => parseInt(hex.slice(at, at + 2), 16));
    return `rgba(${r}, ${g}, ${b}, ${alpha})`;
  };

  const sum = (arrays, length) => Array.from({ length }, (_, i) => arrays.reduce((total, values) => total + values[i], 0));

  // Counts are whole: no tick at 0.5 requests.
  const countTicks = { precision: 0, callback: (value) => number.format(value) };

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
      y: { stacked: true, beginAtZero: true, ticks: countTicks },
    },
  });

  // The minor-unit integers of a cost chart in the major unit, and how one reads with its currency.
  const moneyFormat = (data) => {
    const digits = new Intl.NumberFormat("en-US", {
      minimumFractionDigits: data.exponent,
      maximumFractionDigits: data.exponent,
    });
    return (value) => `${digits.format(value)} ${data.currency}`;
  };

  const builders = {
    requests(data) {
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: data.models.map((series) => ({
            label: series.model,
            data: series.requests,
            backgroundColor: series.color,
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
          datasets: data.models.flatMap((series) => [
            { label: `${series.model} · input`, data: series.input_tokens, stack: "input", backgroundColor: series.color },
            {
              label: `${series.model} · output`,
              data: series.output_tokens,
              stack: "output",
              backgroundColor: faded(series.color, 0.45),
              borderColor: series.color,
              borderWidth: 1,
            },
          ]),
        },
        options: baseOptions(),
      };
    },

    cost(data) {
      const scale = 10 ** data.exponent;
      const format = moneyFormat(data);
      const options = baseOptions();
      options.plugins.tooltip.callbacks.label = (item) => `${item.dataset.label}: ${format(item.parsed.y)}`;
      options.scales.y.ticks = { callback: (value) => format(value) };
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: data.models.map((series) => ({
            label: series.model,
            data: series.cost_minor.map((minor) => minor / scale),
            backgroundColor: series.color,
          })),
        },
        options,
      };
    },

    errors(data) {
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: data.series.map((series) => ({
            label: series.label,
            data: series.counts,
            backgroundColor: series.color,
          })),
        },
        options: baseOptions(),
      };
    },

    overview(data) {
      const length = data.labels.length;
      const options = baseOptions();
      options.scales = {
        x: { stacked: true, grid: { display: false }, ticks: { maxRotation: 0 } },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: "Requests" }, ticks: countTicks },
        tokens: {
          position: "right",
          beginAtZero: true,
          title: { display: true, text: "Tokens" },
          grid: { drawOnChartArea: false },
          ticks: countTicks,
        },
      };
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: [
            ...data.models.map((series) => ({
              label: series.model,
              data: series.requests,
              backgroundColor: series.color,
              yAxisID: "y",
            })),
            {
              type: "line",
              label: "Tokens",
              data: sum(data.models.flatMap((s) => [s.input_tokens, s.output_tokens]), length),
              borderColor: TOKENS_COLOR,
              backgroundColor: TOKENS_COLOR,
              // Straight segments: a curve would dip below zero next to a day without tokens.
              tension: 0,
              yAxisID: "tokens",
            },
          ],
        },
        options,
      };
    },
  };

  for (const swatch of document.querySelectorAll("[data-color]")) {
    swatch.style.backgroundColor = swatch.dataset.color;
  }

  for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
    const source = document.getElementById(canvas.dataset.source);
    const build = builders[canvas.dataset.chart];
    if (source && build) new Chart(canvas, build(JSON.parse(source.textContent)));
  }
})();
