// A small SVG line chart for time series: our own code, no dependencies, no build step.
//
//   const chart = new LineChart(element, {
//     title: "Queue depth", yLabel: "jobs waiting", integer: true,
//     series: [{ key: "depth", label: "depth", area: true }],
//     format: (v) => String(v),
//   });
//   chart.update({ start, end, t: [...seconds], values: { depth: [...] }, refLines: [...] });
//
// A null value means "no sample that second" and leaves a gap in the line. The chart sizes
// itself to its container (a ResizeObserver redraws it), and every piece of text is set with
// textContent, so data never becomes markup.

const SVG_NS = "http://www.w3.org/2000/svg";
const HEIGHT = 200;
const MARGIN = { top: 26, right: 12, bottom: 40 };
const TICK_FONT_PX = 12;
let nextId = 0;

function svgEl(name, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (parent) parent.appendChild(el);
  return el;
}

function htmlEl(name, className, parent = null) {
  const el = document.createElement(name);
  if (className) el.className = className;
  if (parent) parent.appendChild(el);
  return el;
}

/** Round tick steps (1, 2, 2.5, 5 x 10^n) from 0 up to at least ``max``. */
export function niceTicks(max, { count = 5, integer = false } = {}) {
  if (!(max > 0) || !Number.isFinite(max)) max = integer ? count : 1;
  const raw = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / magnitude;
  let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude;
  if (integer) step = Math.max(1, Math.ceil(step));
  const top = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let i = 0; i * step <= top + step / 2; i += 1) ticks.push(Number((i * step).toPrecision(12)));
  return { top, step, ticks };
}

/** Split points into runs without nulls: each run becomes one piece of the line. */
export function segments(points) {
  const runs = [];
  let run = [];
  for (const point of points) {
    if (point === null) {
      if (run.length) runs.push(run);
      run = [];
    } else {
      run.push(point);
    }
  }
  if (run.length) runs.push(run);
  return runs;
}

const fixed = (n) => n.toFixed(1);

/** An SVG path for a line with gaps; a lone sample is drawn as a dot (round caps on "h0"). */
export function linePath(runs) {
  return runs
    .map((run) => {
      const [first, ...rest] = run;
      const head = `M${fixed(first.x)},${fixed(first.y)}`;
      return rest.length ? head + rest.map((p) => `L${fixed(p.x)},${fixed(p.y)}`).join("") : `${head}h0`;
    })
    .join("");
}

/** The area under each run of the line, down to ``baseline``. */
export function areaPath(runs, baseline) {
  return runs
    .filter((run) => run.length > 1)
    .map((run) => {
      const first = run[0];
      const last = run[run.length - 1];
      const top = run.map((p) => `L${fixed(p.x)},${fixed(p.y)}`).join("");
      return `M${fixed(first.x)},${fixed(baseline)}${top}L${fixed(last.x)},${fixed(baseline)}Z`;
    })
    .join("");
}

export class LineChart {
  /**
   * @param {HTMLElement} container where the chart and its legend go
   * @param {object} options
   *   title: the chart's accessible name; description: what it shows (for screen readers)
   *   yLabel: the y axis name with its unit; xLabel: the x axis name with its unit
   *   series: [{ key, label, className, area, dots }]: className picks the colour and dash in
   *     CSS; dots: the series is points, not a line (its legend shows a dot)
   *   dotRadius: the radius of a lone point (4)
   *   legendExtra: [{ key, label, className }]: more legend entries, such as reference lines
   *   format: value -> text for ticks and the summary; integer: whole-number ticks
   *   minTop: the y axis reaches at least this; xTicks: x units between x ticks, counted back from the end
   *   xTickLabel: (x, fromEnd) -> the tick's text; by default "now", then the seconds ago
   *   empty: what to say when no series has a sample
   */
  constructor(container, options) {
    this.container = container;
    this.options = {
      xLabel: "time (seconds ago)",
      format: (v) => String(v),
      integer: false,
      minTop: 0,
      xTicks: 30,
      xTickLabel: (_x, ago) => (ago === 0 ? "now" : String(Math.round(ago))),
      empty: "No samples yet",
      dotRadius: 4,
      ...options,
    };
    this.data = null;
    this.width = 0;
    const id = `chart-${(nextId += 1)}`;

    this.svg = svgEl("svg", {
      class: "chart-svg",
      role: "img",
      height: HEIGHT,
      "aria-labelledby": `${id}-title`,
      "aria-describedby": `${id}-desc`,
    });
    this.titleEl = svgEl("title", { id: `${id}-title` }, this.svg);
    this.titleEl.textContent = this.options.title;
    this.descEl = svgEl("desc", { id: `${id}-desc` }, this.svg);
    this.descEl.textContent = this.options.description ?? "";
    this.plot = svgEl("g", {}, this.svg);
    container.appendChild(this.svg);
    this.legend = this.buildLegend();

    this.resize(container.clientWidth);
    if (typeof ResizeObserver === "function") {
      this.observer = new ResizeObserver((entries) => {
        const width = Math.floor(entries[0].contentRect.width);
        if (width !== this.width) this.resize(width);
      });
      this.observer.observe(container);
    }
  }

  buildLegend() {
    const list = htmlEl("ul", "chart-legend", this.container);
    const entries = [...this.options.series, ...(this.options.legendExtra ?? [])];
    for (const entry of entries) {
      const item = htmlEl("li", "", list);
      if (entry.key) item.dataset.key = entry.key;
      const swatch = svgEl("svg", { class: "chart-swatch", width: 24, height: 10, "aria-hidden": "true" }, item);
      if (entry.dots) svgEl("circle", { cx: 12, cy: 5, r: 4, class: `chart-dot ${entry.className ?? ""}` }, swatch);
      else svgEl("line", { x1: 1, y1: 5, x2: 23, y2: 5, class: `chart-line ${entry.className ?? ""}` }, swatch);
      const label = htmlEl("span", "", item);
      label.textContent = entry.label;
    }
    return list;
  }

  /** Show or hide a legend entry, such as a reference line that is not drawn just now. */
  showLegend(key, visible) {
    const item = this.legend.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (item) item.hidden = !visible;
  }

  resize(width) {
    this.width = Math.max(width || 0, 240);
    this.svg.setAttribute("width", this.width);
    this.svg.setAttribute("viewBox", `0 0 ${this.width} ${HEIGHT}`);
    this.draw();
  }

  /**
   * @param {object} data
   *   start, end: the x domain in seconds (end is "now"); t: the time of each sample
   *   values: { [series key]: (number|null)[] } aligned with t
   *   refLines: [{ value, label, className }]: horizontal lines such as a cap
   *   summary: a sentence for screen readers about the latest values
   */
  update(data) {
    this.data = data;
    this.draw();
  }

  draw() {
    const { options } = this;
    const data = this.data ?? { start: -120, end: 0, t: [], values: {} };
    const refLines = (data.refLines ?? []).filter((ref) => Number.isFinite(ref.value));
    this.plot.replaceChildren();

    // The y scale: from 0 to a round number above every value and reference line.
    let max = options.minTop;
    let samples = 0;
    for (const s of options.series) {
      for (const v of data.values[s.key] ?? []) {
        if (v === null || v === undefined || !Number.isFinite(v)) continue;
        samples += 1;
        if (v > max) max = v;
      }
    }
    for (const ref of refLines) max = Math.max(max, ref.value * 1.1);
    const { top, ticks } = niceTicks(max, { integer: options.integer });

    const tickLabels = ticks.map((v) => options.format(v));
    const widest = Math.max(...tickLabels.map((label) => label.length), 1);
    const left = Math.min(64, 14 + widest * TICK_FONT_PX * 0.62);
    const plotW = this.width - left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const baseline = MARGIN.top + plotH;
    const span = data.end - data.start || 1;
    const x = (t) => left + ((t - data.start) / span) * plotW;
    const y = (v) => baseline - (v / top) * plotH;

    // Grid and y ticks.
    const grid = svgEl("g", { class: "chart-grid" }, this.plot);
    ticks.forEach((v, i) => {
      svgEl("line", { x1: left, x2: left + plotW, y1: fixed(y(v)), y2: fixed(y(v)) }, grid);
      const attrs = { x: left - 6, y: fixed(y(v)), class: "chart-tick", "text-anchor": "end", dy: "0.32em" };
      const label = svgEl("text", attrs, grid);
      label.textContent = tickLabels[i];
    });
    const yName = svgEl("text", { x: 2, y: 12, class: "chart-axis-label" }, this.plot);
    yName.textContent = options.yLabel;

    // x ticks: whole multiples of xTicks back from the end ("now" on a time axis).
    const axis = svgEl("g", { class: "chart-axis" }, this.plot);
    svgEl("line", { x1: left, x2: left + plotW, y1: baseline, y2: baseline }, axis);
    for (let ago = 0; ago <= span + 1e-9; ago += options.xTicks) {
      const px = x(data.end - ago);
      svgEl("line", { x1: fixed(px), x2: fixed(px), y1: baseline, y2: baseline + 4 }, axis);
      const anchor = ago === 0 ? "end" : px - left < 14 ? "start" : "middle";
      const label = svgEl("text", { x: fixed(px), y: baseline + 16, class: "chart-tick", "text-anchor": anchor }, axis);
      label.textContent = options.xTickLabel(data.end - ago, ago);
    }
    const xAttrs = { x: left + plotW / 2, y: HEIGHT - 4, class: "chart-axis-label", "text-anchor": "middle" };
    const xName = svgEl("text", xAttrs, this.plot);
    xName.textContent = options.xLabel;

    // Reference lines (such as the cap), each with its label.
    for (const ref of refLines) {
      const py = y(ref.value);
      const lineAttrs = { x1: left, x2: left + plotW, y1: fixed(py), y2: fixed(py), class: `chart-ref ${ref.className ?? ""}` };
      svgEl("line", lineAttrs, this.plot);
      const below = py - MARGIN.top < 16;
      // At the left end: the newest data, on the right, stays clear.
      const label = svgEl("text", {
        x: left + 6,
        y: fixed(below ? py + 14 : py - 5),
        class: `chart-ref-label ${ref.className ?? ""}`,
      }, this.plot);
      label.textContent = ref.label;
    }

    // The series, clipped to the plot so a spike never draws over the labels.
    const clipId = `${this.titleEl.id}-clip`;
    const defs = svgEl("defs", {}, this.plot);
    const clip = svgEl("clipPath", { id: clipId }, defs);
    svgEl("rect", { x: left, y: MARGIN.top - 2, width: plotW + 2, height: plotH + 4 }, clip);
    const lines = svgEl("g", { "clip-path": `url(#${clipId})` }, this.plot);
    for (const s of options.series) {
      const values = data.values[s.key] ?? [];
      const points = data.t.map((t, i) => {
        const v = values[i];
        return v === null || v === undefined || !Number.isFinite(v) ? null : { x: x(t), y: y(v) };
      });
      const runs = segments(points);
      if (!runs.length) continue;
      if (s.area) svgEl("path", { d: areaPath(runs, baseline), class: `chart-area ${s.className ?? ""}` }, lines);
      svgEl("path", { d: linePath(runs), class: `chart-line ${s.className ?? ""}`, "data-series": s.key }, lines);
      // A sample with no neighbour (one job in two minutes) is a dot big enough to see.
      for (const [point] of runs.filter((run) => run.length === 1)) {
        svgEl("circle", { cx: fixed(point.x), cy: fixed(point.y), r: options.dotRadius, class: `chart-dot ${s.className ?? ""}`, "data-series": s.key }, lines);
      }
    }

    if (!samples) {
      const note = svgEl("text", {
        x: left + plotW / 2,
        y: MARGIN.top + plotH / 2,
        class: "chart-empty",
        "text-anchor": "middle",
        dy: "0.32em",
      }, this.plot);
      note.textContent = data.emptyText ?? options.empty;
    }

    this.descEl.textContent = [options.description, data.summary].filter(Boolean).join(" ");
  }
}
