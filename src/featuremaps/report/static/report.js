/* featuremaps report: draws every layer's channels from float16 data files, client-side.
 *
 * The page embeds one JSON object (#fm-config): the layers, colour lookup tables and ranges.
 * Layer data arrive lazily as <script src="data/NNNN_name.js"> files that call
 * featuremaps.layerData(...) (browsers refuse fetch() of file:// URLs, but run script files).
 * Everything user-provided (layer names) is put into the page with textContent, never as HTML.
 */
"use strict";

(function () {
  const cfg = JSON.parse(document.getElementById("fm-config").textContent);
  const NAN_RGB = [255, 0, 255]; // the same magenta as the PNGs: no colormap uses it
  const MIN_TILE = 48; // small maps are enlarged by a whole factor up to at least this size
  const VIEW_SIZE = 480; // the enlarged map in the channel view

  // IEEE half -> float32, for every one of the 65536 bit patterns.
  const HALF = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) HALF[h] = sign * frac * Math.pow(2, -24);
    else if (exp === 31) HALF[h] = frac ? NaN : sign * Infinity;
    else HALF[h] = sign * (1 + frac / 1024) * Math.pow(2, exp - 15);
  }

  // Colour tables: 256 RGB entries each, packed as RGBA words for ImageData (byte order R,G,B,A).
  const LUTS = {};
  for (const [name, hex] of Object.entries(cfg.luts)) {
    const rgb = new Uint8Array(768);
    for (let i = 0; i < 768; i++) rgb[i] = parseInt(hex.substr(2 * i, 2), 16);
    LUTS[name] = rgb;
  }
  const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  function pack(r, g, b) {
    return LITTLE ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
  }
  const packedCache = {};
  function packed(name) {
    if (!packedCache[name]) {
      const rgb = LUTS[name];
      const words = new Uint32Array(257);
      for (let i = 0; i < 256; i++) words[i] = pack(rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
      words[256] = pack(NAN_RGB[0], NAN_RGB[1], NAN_RGB[2]);
      packedCache[name] = words;
    }
    return packedCache[name];
  }

  const state = { scale: cfg.scale, seq: cfg.cmap.sequential, div: cfg.cmap.diverging };
  const layers = new Map(); // key -> layer state
  const byStem = new Map();
  let firstDrawn = false;

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (Number.isNaN(v)) return "NaN";
    if (!Number.isFinite(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a < 1e-4 || a >= 1e5) {
      const [m, e] = v.toExponential(3).split("e");
      return `${m.replace(/\.?0+$/, "")}e${e}`;
    }
    const s = v.toPrecision(4);
    return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---------------------------------------------------------------- scales and colours
  // The same rules as the PNGs: signed data is centred on 0 with a diverging map. Which ranges
  // are signed is decided once, in Python (render.scaling), and arrives in the config.
  function centred(lo, hi) {
    const m = Math.max(Math.abs(lo), Math.abs(hi));
    return [m > 0 ? -m : 0, m];
  }

  function layerScale(L) {
    const signedLayer = L.signed;
    if (state.scale === "fixed" && cfg.fixed) {
      const [lo, hi] = cfg.fixed;
      return { mode: "fixed", lo, hi, signed: cfg.fixedSigned };
    }
    if (state.scale === "global" && cfg.global) {
      const signed = signedLayer || cfg.globalSigned;
      const [lo, hi] = signed ? centred(cfg.global[0], cfg.global[1]) : cfg.global;
      return { mode: "global", lo, hi, signed };
    }
    if (state.scale === "channel") return { mode: "channel", lo: null, hi: null, signed: signedLayer };
    const lo = L.low === null ? 0 : L.low;
    const hi = L.high === null ? 0 : L.high;
    const [a, b] = signedLayer ? centred(lo, hi) : [lo, hi];
    return { mode: "layer", lo: a, hi: b, signed: signedLayer };
  }

  function tileRange(L, sc, i) {
    if (sc.mode !== "channel") return [sc.lo, sc.hi];
    const r = L.ranges[i] || [null, null];
    const lo = r[0] === null ? 0 : r[0];
    const hi = r[1] === null ? 0 : r[1];
    return sc.signed ? centred(lo, hi) : [lo, hi];
  }

  function cmapOf(sc) {
    return sc.signed ? state.div : state.seq;
  }

  // Paint values[offset .. offset + n) into an ImageData with range [lo, hi].
  function paint(image, values, offset, lo, hi, symmetric, words) {
    const out = new Uint32Array(image.data.buffer);
    const n = out.length;
    const width = hi - lo;
    const flat = symmetric ? 128 : 0;
    const scale = width > 0 ? 255 / width : 0;
    for (let j = 0; j < n; j++) {
      const x = values[offset + j];
      let idx;
      if (x !== x || x === Infinity || x === -Infinity) idx = 256; // NaN/Inf: the magenta entry
      else if (x <= lo) idx = width > 0 || x < lo ? 0 : flat;
      else if (x >= hi) idx = width > 0 || x > hi ? 255 : flat;
      else idx = ((x - lo) * scale + 0.5) | 0; // round(t * 255), t in (0, 1)
      out[j] = words[idx];
    }
  }

  function drawBar(canvas, name) {
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(256, 1);
    const words = packed(name);
    const out = new Uint32Array(image.data.buffer);
    for (let i = 0; i < 256; i++) out[i] = words[i];
    ctx.putImageData(image, 0, 0);
  }

  const SCALE_TEXT = {
    layer: "per layer",
    channel: "per channel",
    global: "global (all layers)",
    fixed: "fixed",
  };

  function legendText(L, sc) {
    const cm = `colormap ${cmapOf(sc)}${sc.signed ? ", centred on 0" : ""}`;
    const k = L.shown.length;
    const total = L.shape ? L.shape[0] : k;
    let scale = `scale: ${SCALE_TEXT[sc.mode]}`;
    if (sc.mode === "layer" && k < total) scale += ` (range over all ${total} channels)`;
    if (sc.mode === "channel") scale += " (each tile its own range; see captions)";
    let text = `${scale} · ${cm}`;
    if (sc.mode !== "channel") text += ` · range ${fmt(sc.lo)} … ${fmt(sc.hi)}`;
    return text;
  }

  function updateLegend(L, sc) {
    const legend = L.section.querySelector(".legend");
    if (!legend) return;
    L.legendDrawn = true;
    drawBar(legend.querySelector(".bar-canvas"), cmapOf(sc));
    const [low, mid, high] =
      sc.mode === "channel"
        ? sc.signed ? ["-max|x|", "0", "+max|x|"] : ["min", "", "max"]
        : [fmt(sc.lo), sc.signed ? "0" : "", fmt(sc.hi)];
    legend.querySelector(".bar-low").textContent = low;
    legend.querySelector(".bar-mid").textContent = mid;
    legend.querySelector(".bar-high").textContent = high;
    let text = legendText(L, sc);
    if (L.overflow) text += ` · ${L.overflow} values beyond the float16 range drawn magenta`;
    legend.querySelector(".legend-scale").textContent = text;
  }

  // ---------------------------------------------------------------- layers
  function tileScale(h, w) {
    return Math.max(1, Math.ceil(MIN_TILE / Math.max(h, w, 1)));
  }

  // Tiles keep their whole-factor enlargement but shrink to fit the page width if needed.
  const TILE_PAD = 4;
  const TILE_GAP = 4;
  const CAPTION = 30;
  let mainWidth = 0;

  function tileWidth(L, h, w, cols) {
    if (!mainWidth) mainWidth = L.tiles.clientWidth || 800;
    const fit = (mainWidth - (cols - 1) * TILE_GAP) / cols - TILE_PAD;
    return Math.max(8, Math.min(w * tileScale(h, w), fit));
  }

  function reserve(L) {
    // Keep the page from jumping when tiles arrive: reserve their height in advance.
    const h = L.shape ? L.shape[1] : 0;
    const w = L.shape ? L.shape[2] : 0;
    const cols = Math.min(cfg.columns, L.shown.length) || 1;
    const rows = Math.ceil(L.shown.length / cols);
    const tw = tileWidth(L, h, w, cols);
    L.tiles.style.minHeight = `${rows * ((tw * h) / Math.max(w, 1) + TILE_PAD + CAPTION + TILE_GAP)}px`;
  }

  function buildTiles(L) {
    const [k, h, w] = L.dataShape;
    const cols = Math.min(cfg.columns, k) || 1;
    const tw = tileWidth(L, h, w, cols);
    L.tiles.textContent = "";
    L.tiles.style.gridTemplateColumns = `repeat(${cols}, max-content)`;
    L.canvases = [];
    L.captions = [];
    for (let i = 0; i < k; i++) {
      const fig = el("figure", "tile");
      fig.tabIndex = 0;
      fig.setAttribute("role", "button");
      fig.dataset.index = String(i);
      fig.dataset.channel = String(L.shown[i]);
      fig.setAttribute("aria-label", `open channel ${L.shown[i]}`);
      const canvas = el("canvas", "pixelated");
      canvas.width = w;
      canvas.height = h;
      canvas.style.width = `${tw}px`;
      canvas.style.height = `${(tw * h) / Math.max(w, 1)}px`;
      const cap = el("figcaption");
      cap.append(el("span", "ch", `#${L.shown[i]}`), el("span", "range"));
      fig.append(canvas, cap);
      L.tiles.append(fig);
      L.canvases.push(canvas);
      L.captions.push(cap.lastChild);
    }
  }

  function draw(L) {
    if (!L.values) return;
    if (!L.canvases) buildTiles(L);
    const [k, h, w] = L.dataShape;
    const sc = layerScale(L);
    const words = packed(cmapOf(sc));
    for (let i = 0; i < k; i++) {
      const [lo, hi] = tileRange(L, sc, i);
      const ctx = L.canvases[i].getContext("2d");
      const image = ctx.createImageData(w, h);
      paint(image, L.values, i * h * w, lo, hi, sc.signed, words);
      ctx.putImageData(image, 0, 0);
      const r = L.ranges[i] || [null, null];
      L.captions[i].textContent =
        sc.mode !== "channel" ? "" : r[0] === null ? "no finite values" : r[0] === r[1] ? `const ${fmt(r[0])}` : `${fmt(lo)} … ${fmt(hi)}`;
    }
    updateLegend(L, sc);
    L.dirty = false;
    L.tiles.dataset.state = "drawn";
    if (!firstDrawn) {
      firstDrawn = true;
      performance.mark("featuremaps-first-layer");
      document.documentElement.dataset.firstLayerMs = performance.now().toFixed(1);
    }
  }

  // Data scripts load one at a time, layers on screen first, so the first picture is not slowed
  // down by its neighbours' files.
  const queue = [];
  let loading = null;

  function request(L, urgent) {
    if (L.requested || !L.data) return;
    const at = queue.indexOf(L);
    if (at >= 0) {
      if (!urgent) return;
      queue.splice(at, 1);
    }
    if (urgent) queue.unshift(L);
    else queue.push(L);
    pump();
  }

  function pump() {
    if (loading || !queue.length) return;
    const L = queue.shift();
    loading = L;
    L.requested = true;
    L.tiles.dataset.state = "loading";
    const script = document.createElement("script");
    script.src = L.data;
    const done = () => {
      loading = null;
      script.remove(); // the data now lives in L.values; the parsed source can be freed
      pump();
    };
    script.addEventListener("load", done);
    script.addEventListener("error", () => {
      done();
      L.tiles.dataset.state = "failed";
      L.tiles.textContent = "";
      L.tiles.append(el("p", "warning", `could not load ${L.data}; showing the PNG instead`));
      if (L.image) {
        const img = el("img", "png");
        img.src = L.image;
        img.alt = `channel mosaic of ${L.name}`;
        L.tiles.append(img);
      }
    });
    document.head.append(script);
  }

  function decode(b64) {
    let bytes;
    if (typeof Uint8Array.fromBase64 === "function") bytes = Uint8Array.fromBase64(b64);
    else {
      const bin = atob(b64);
      bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    }
    const n = bytes.length >> 1;
    const values = new Float32Array(n);
    if (LITTLE) {
      const half = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      for (let i = 0; i < n; i++) values[i] = HALF[half[i]];
    } else {
      for (let i = 0, j = 0; i < n; i++, j += 2) values[i] = HALF[bytes[j] | (bytes[j + 1] << 8)];
    }
    return values;
  }

  function layerData(stem, meta, b64) {
    const L = byStem.get(stem);
    if (!L || L.values) return;
    L.values = decode(b64);
    L.dataShape = meta.shape;
    L.ranges = meta.ranges;
    L.overflow = meta.overflow;
    L.dirty = true;
    if (L.visible) draw(L);
  }

  function layerStats(stem, stats) {
    const L = byStem.get(stem);
    if (!L) return;
    L.stats = stats;
    const details = L.section.querySelector("details.stats");
    if (details && details.open) buildTable(L);
    if (view && view.L === L) showViewStats();
  }

  function requestStats(L) {
    if (L.statsRequested || !L.statsFile) return;
    L.statsRequested = true;
    const script = document.createElement("script");
    script.src = L.statsFile;
    document.head.append(script);
  }

  // ---------------------------------------------------------------- statistics table
  const COLUMNS = [
    ["channel", "channel"],
    ["mean", "mean"],
    ["std", "std"],
    ["min", "min"],
    ["max", "max"],
    ["zeros", "zeros"],
  ];

  function buildTable(L) {
    const body = L.section.querySelector(".stats-body");
    if (!body || body.dataset.built) return;
    body.dataset.built = "1";
    const shownIndex = new Map(L.shown.map((c, i) => [c, i]));
    const n = L.stats.mean.length;
    const table = el("table", "stats-table");
    const head = el("tr");
    for (const [key, label] of COLUMNS) {
      const th = el("th");
      th.setAttribute("aria-sort", key === "channel" ? "ascending" : "none");
      const button = el("button", "sort", label);
      button.type = "button";
      button.dataset.key = key;
      th.append(button);
      head.append(th);
    }
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    const rows = [];
    for (let c = 0; c < n; c++) {
      const tr = el("tr");
      tr.dataset.channel = String(c);
      const first = el("td");
      if (shownIndex.has(c)) {
        const b = el("button", "open", `#${c}`);
        b.type = "button";
        b.title = "open this channel";
        b.dataset.index = String(shownIndex.get(c));
        first.append(b);
      } else first.textContent = `#${c}`;
      tr.append(first);
      for (const key of ["mean", "std", "min", "max"]) {
        const v = L.stats[key][c];
        const td = el("td", "num", fmt(v));
        if (v !== null) td.title = String(v);
        tr.append(td);
      }
      const z = L.stats.zeros[c];
      tr.append(el("td", "num", z === null ? "—" : `${(100 * z).toFixed(1)}%`));
      rows.push({ tr, c });
      tbody.append(tr);
    }
    table.append(thead, tbody);
    body.append(table);
    thead.addEventListener("click", (ev) => {
      const button = ev.target.closest("button.sort");
      if (!button) return;
      const key = button.dataset.key;
      const th = button.parentElement;
      const dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
      for (const other of head.children) other.setAttribute("aria-sort", "none");
      th.setAttribute("aria-sort", dir);
      const sign = dir === "ascending" ? 1 : -1;
      const value = (r) => (key === "channel" ? r.c : L.stats[key][r.c]);
      rows.sort((a, b) => {
        const va = value(a);
        const vb = value(b);
        if (va === null || vb === null) return va === vb ? a.c - b.c : va === null ? 1 : -1;
        return sign * (va - vb) || a.c - b.c;
      });
      const frag = document.createDocumentFragment();
      for (const r of rows) frag.append(r.tr);
      tbody.append(frag);
    });
    tbody.addEventListener("click", (ev) => {
      const button = ev.target.closest("button.open");
      if (button) openView(L, Number(button.dataset.index));
    });
  }

  // ---------------------------------------------------------------- channel view
  const dialog = document.getElementById("fm-view");
  const viewMap = document.getElementById("fm-view-map");
  const viewOver = document.getElementById("fm-view-over");
  const viewInput = document.getElementById("fm-view-input");
  const opacity = document.getElementById("fm-view-opacity");
  const threshold = document.getElementById("fm-view-threshold");
  const thresholdOut = document.getElementById("fm-view-threshold-value");
  const readout = document.getElementById("fm-readout");
  let view = null;

  // The overlay's threshold means what featuremaps.render.overlay(threshold=...) means: a cell
  // whose place on the colour scale, t = (x - lo) / (hi - lo) in [0, 1], is below it is left
  // transparent, so only strong responses show. NaN/Inf cells have no place on the scale and stay
  // drawn (magenta). Returns how many cells were hidden.
  function hideBelow(image, values, offset, lo, hi, symmetric, threshold) {
    if (!(threshold > 0)) return 0;
    const out = new Uint32Array(image.data.buffer);
    const width = hi - lo;
    let hidden = 0;
    for (let j = 0; j < out.length; j++) {
      const x = values[offset + j];
      if (x !== x || x === Infinity || x === -Infinity) continue;
      let t;
      if (width > 0) t = x <= lo ? 0 : x >= hi ? 1 : (x - lo) / width;
      else t = x > hi ? 1 : x < lo ? 0 : symmetric ? 0.5 : 0; // a constant range, as in paint()
      if (t < threshold) {
        out[j] = 0; // transparent black
        hidden++;
      }
    }
    return hidden;
  }

  function paintCanvas(canvas, threshold) {
    const { L, i } = view;
    const [, h, w] = L.dataShape;
    const sc = layerScale(L);
    const [lo, hi] = tileRange(L, sc, i);
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(w, h);
    paint(image, L.values, i * h * w, lo, hi, sc.signed, packed(cmapOf(sc)));
    const hidden = hideBelow(image, L.values, i * h * w, lo, hi, sc.signed, threshold);
    ctx.putImageData(image, 0, 0);
    return hidden;
  }

  function drawOverlay() {
    if (!view) return;
    const [, h, w] = view.L.dataShape;
    const t = Number(threshold.value) / 100;
    const hidden = paintCanvas(viewOver, t);
    viewOver.dataset.hidden = String(hidden);
    thresholdOut.textContent = `${t.toFixed(2)} (${h * w - hidden} of ${h * w} cells shown)`;
  }

  function drawView() {
    if (!view) return;
    const { L, i } = view;
    const [, h, w] = L.dataShape;
    const sc = layerScale(L);
    const [lo, hi] = tileRange(L, sc, i);
    paintCanvas(viewMap, 0); // the map itself always shows every cell
    drawOverlay();
    const s = Math.max(h, w) > VIEW_SIZE ? VIEW_SIZE / Math.max(h, w) : Math.floor(VIEW_SIZE / Math.max(h, w));
    viewMap.style.width = `${w * s}px`;
    viewMap.style.height = `${h * s}px`;
    document.getElementById("fm-view-legend").textContent =
      `${legendText(L, sc)}${sc.mode === "channel" ? ` · this channel: ${fmt(lo)} … ${fmt(hi)}` : ""}`;
  }

  // Place the overlay by the layer's receptive-field geometry: cell (r, c) is centred on input
  // pixel (offset + r * stride) and covers one stride around it, so the map is scaled by the
  // stride and shifted by offset - stride / 2 (+ 0.5: pixel centres sit at half-pixel canvas
  // positions). Without geometry the map is stretched over the input, and the note says so.
  function placeOverlay(L, h, w) {
    const g = L.geometry;
    const W = viewInput ? viewInput.naturalWidth : 0;
    const H = viewInput ? viewInput.naturalHeight : 0;
    const note = document.getElementById("fm-view-place");
    const box = viewOver.style;
    if (g && W && H) {
      const [sy, sx] = g.stride;
      const [oy, ox] = g.offset;
      box.left = `${(100 * (ox - sx / 2 + 0.5)) / W}%`;
      box.top = `${(100 * (oy - sy / 2 + 0.5)) / H}%`;
      box.width = `${(100 * w * sx) / W}%`;
      box.height = `${(100 * h * sy) / H}%`;
      box.right = box.bottom = "auto";
      viewOver.dataset.placed = "geometry";
      note.textContent =
        `placed by receptive-field geometry (${g.method}): cell (r, c) is centred on input ` +
        `(${fmt(oy)} + ${fmt(sy)}·r, ${fmt(ox)} + ${fmt(sx)}·c) and sees ` +
        `${fmt(g.receptive_field[0])}×${fmt(g.receptive_field[1])} px`;
    } else {
      box.left = box.top = box.right = box.bottom = "0";
      box.width = box.height = "100%";
      viewOver.dataset.placed = "stretched";
      note.textContent = "stretched over the input as fed (no geometry known for this layer), so alignment is approximate";
    }
  }

  function showViewStats() {
    const target = document.getElementById("fm-view-stats");
    const { L, i } = view;
    const c = L.shown[i];
    if (!L.stats) {
      target.textContent = "";
      requestStats(L);
      return;
    }
    const z = L.stats.zeros[c];
    target.textContent =
      `channel #${c} (all values, exact): mean ${fmt(L.stats.mean[c])} · std ${fmt(L.stats.std[c])} · ` +
      `min ${fmt(L.stats.min[c])} · max ${fmt(L.stats.max[c])} · zeros ${z === null ? "—" : `${(100 * z).toFixed(1)}%`}`;
  }

  function openView(L, i) {
    if (!L.values) return;
    view = { L, i };
    const [, h, w] = L.dataShape;
    document.getElementById("fm-view-title").textContent =
      `${L.name} · channel #${L.shown[i]} · ${h}×${w}`;
    readout.textContent = `Hover the map to read the value under the cursor (${cfg.precision} copies of the outputs).`;
    delete readout.dataset.row;
    delete readout.dataset.col;
    delete readout.dataset.value;
    drawView();
    placeOverlay(L, h, w);
    showViewStats();
    viewOver.style.opacity = String(Number(opacity.value) / 100);
    if (!dialog.open) dialog.showModal();
  }

  function hover(ev) {
    if (!view) return;
    const canvas = ev.currentTarget;
    const rect = canvas.getBoundingClientRect();
    const [, h, w] = view.L.dataShape;
    const col = Math.min(w - 1, Math.max(0, Math.floor(((ev.clientX - rect.left) / rect.width) * w)));
    const row = Math.min(h - 1, Math.max(0, Math.floor(((ev.clientY - rect.top) / rect.height) * h)));
    const v = view.L.values[view.i * h * w + row * w + col];
    readout.dataset.row = String(row);
    readout.dataset.col = String(col);
    readout.dataset.value = String(v);
    let text = `(row ${row}, col ${col}) = ${fmt(v)}`;
    if (!Number.isFinite(v) && view.L.overflow) text += " (NaN/Inf, or beyond the float16 range)";
    readout.textContent = `${text} · ${cfg.precision} copy of the output value (about 3 significant digits)`;
  }

  viewMap.addEventListener("mousemove", hover);
  viewOver.addEventListener("mousemove", hover);
  opacity.addEventListener("input", () => {
    viewOver.style.opacity = String(Number(opacity.value) / 100);
  });
  threshold.addEventListener("input", drawOverlay);
  document.getElementById("fm-view-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    view = null;
  });
  if (!viewInput) document.getElementById("fm-view-overlay").parentElement.hidden = true;

  // ---------------------------------------------------------------- controls
  function fillSelect(select, names, chosen) {
    for (const name of names) {
      const option = el("option", "", name);
      option.value = name;
      option.selected = name === chosen;
      select.append(option);
    }
  }

  function redrawAll() {
    for (const L of layers.values()) {
      if (!L.values) continue;
      L.dirty = true;
      if (L.visible) draw(L);
    }
    for (const L of layers.values()) {
      if (!L.values && L.legendDrawn) updateLegend(L, layerScale(L));
    }
    if (view) drawView();
  }

  const scaleSelect = document.getElementById("fm-scale");
  if (!cfg.global) scaleSelect.querySelector("option[value=global]").disabled = true;
  scaleSelect.value = state.scale;
  scaleSelect.addEventListener("change", () => {
    state.scale = scaleSelect.value;
    redrawAll();
  });
  const seqSelect = document.getElementById("fm-cmap-seq");
  const divSelect = document.getElementById("fm-cmap-div");
  fillSelect(seqSelect, cfg.sequential, state.seq);
  fillSelect(divSelect, cfg.diverging, state.div);
  seqSelect.addEventListener("change", () => {
    state.seq = seqSelect.value;
    redrawAll();
  });
  divSelect.addEventListener("change", () => {
    state.div = divSelect.value;
    redrawAll();
  });
  document.getElementById("fm-expand").addEventListener("click", () => {
    for (const d of document.querySelectorAll("#fm-outline details")) d.open = true;
  });
  document.getElementById("fm-collapse").addEventListener("click", () => {
    for (const d of document.querySelectorAll("#fm-outline details")) d.open = false;
  });

  // ---------------------------------------------------------------- wiring
  const observer = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        const L = layers.get(Number(entry.target.dataset.key));
        L.visible = entry.isIntersecting;
        if (!L.visible) {
          const at = queue.indexOf(L); // scrolled past before its turn: do not load it now
          if (at >= 0) queue.splice(at, 1);
          continue;
        }
        request(L, false);
        if (L.values && L.dirty) draw(L);
        else if (!L.legendDrawn) updateLegend(L, layerScale(L)); // the range is known before the data
      }
    },
    { rootMargin: "1200px 0px" },
  );
  const onScreen = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) request(layers.get(Number(entry.target.dataset.key)), true);
    }
  });

  for (const spec of cfg.layers) {
    const section = document.getElementById(`L${spec.key}`);
    if (!section) continue;
    const L = {
      key: spec.key,
      name: spec.name,
      shape: spec.shape,
      shown: spec.shown,
      low: spec.low,
      high: spec.high,
      signed: spec.signed,
      data: spec.data,
      image: spec.image,
      geometry: spec.geometry,
      statsFile: spec.stats,
      section,
      tiles: section.querySelector(".tiles"),
      values: null,
      visible: false,
      dirty: false,
    };
    layers.set(L.key, L);
    if (spec.stem) byStem.set(spec.stem, L);
    if (L.data) {
      reserve(L);
      observer.observe(section);
      onScreen.observe(section);
      L.tiles.addEventListener("click", (ev) => {
        const fig = ev.target.closest("figure.tile");
        if (fig) openView(L, Number(fig.dataset.index));
      });
      L.tiles.addEventListener("keydown", (ev) => {
        const fig = ev.target.closest("figure.tile");
        if (fig && (ev.key === "Enter" || ev.key === " ")) {
          ev.preventDefault();
          openView(L, Number(fig.dataset.index));
        }
      });
    }
    const details = section.querySelector("details.stats");
    if (details) {
      details.addEventListener("toggle", () => {
        if (!details.open) return;
        if (L.stats) buildTable(L);
        else requestStats(L);
      });
    }
  }

  // The outline follows the layer in the address (a click on an entry, a link, a reload).
  function markCurrent() {
    const previous = document.querySelector("#fm-outline a[aria-current]");
    if (previous) previous.removeAttribute("aria-current");
    const id = decodeURIComponent(location.hash.slice(1));
    if (!/^L[0-9]+$/.test(id)) return;
    const link = document.querySelector(`#fm-outline a[href="#${id}"]`);
    if (!link) return;
    link.setAttribute("aria-current", "location");
    for (let d = link.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
    link.scrollIntoView({ block: "nearest" });
  }
  window.addEventListener("hashchange", markCurrent);
  markCurrent();

  window.featuremaps = Object.freeze({ layerData, layerStats });
})();
