/* featuremaps report: draws every layer's channels from float16 data files, client-side.
 *
 * The page embeds one JSON object (#fm-config): the layers, colour lookup tables and ranges.
 * Layer data arrive lazily as <script src="data/NNNN_name.js"> files that call
 * featuremaps.layerData(...) (browsers refuse fetch() of file:// URLs, but run script files).
 * Everything user-provided (layer names) is put into the page with textContent, never as HTML.
 *
 * The address (the part after #) holds what is on screen, so a link or a reload shows it again:
 *   #layer=<record name>&channel=<c>&scale=channel&cmap=magma&div=coolwarm&zoom=4&pin=<c>@<name>
 * Layout preferences (tile density, header folded) are kept in localStorage.
 */
"use strict";

(function () {
  const cfg = JSON.parse(document.getElementById("fm-config").textContent);
  const NAN_RGB = [255, 0, 255]; // the same magenta as the PNGs: no colormap uses it
  const MIN_TILE = 48; // small maps are enlarged by a whole factor up to at least this size
  const VIEW_SIZE = 480; // the channel view's map box, at most
  const RANDOM = Boolean(cfg.randomWeights);
  const RANDOM_TEXT = "RANDOM WEIGHTS";
  const NO_FINITE = "no finite values: every cell is NaN/Inf"; // render.scaling.NO_FINITE_TEXT
  const DENSITY = { small: 72, medium: 128, large: 220 }; // target tile widths, CSS px
  const ZOOM_MAX = 64; // CSS px per map cell

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

  // The float16 value nearest to x (round half to even), as numpy's astype(float16) gives it.
  // The page's values are float16 copies while the ranges are exact float32: a bound is compared
  // with the values only after the same rounding, or a constant channel of 0.568 (float16
  // 0.5679) would fall below its own minimum and take an arbitrary end of the colormap.
  function toHalf(x) {
    if (!Number.isFinite(x) || x === 0) return x;
    const a = Math.abs(x);
    if (a >= 65520) return x > 0 ? Infinity : -Infinity;
    let e = Math.floor(Math.log2(a));
    if (Math.pow(2, e) > a) e -= 1;
    else if (Math.pow(2, e + 1) <= a) e += 1;
    if (e < -14) e = -14; // subnormal halves share the smallest exponent
    const ulp = Math.pow(2, e - 10);
    const q = a / ulp; // exact: ulp is a power of two
    let r = Math.round(q);
    if (r - q === 0.5 && r % 2 === 1) r -= 1; // a tie goes to the even neighbour
    return (x < 0 ? -r : r) * ulp;
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

  // ---------------------------------------------------------------- stored preferences
  const PREFS_KEY = "featuremaps-report-prefs";
  function loadPrefs() {
    try {
      const value = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
      return value && typeof value === "object" ? value : {};
    } catch (_) {
      return {}; // storage switched off, or unreadable: run with the defaults
    }
  }
  const prefs = loadPrefs();
  function savePrefs() {
    try {
      localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
    } catch (_) {
      /* storage switched off: the preference lasts until the page closes */
    }
  }

  const SCALES = ["layer", "channel", "global", "fixed"];
  const state = {
    scale: cfg.scale,
    seq: cfg.cmap.sequential,
    div: cfg.cmap.diverging,
    density: (DENSITY[prefs.density] || prefs.density === "run") ? prefs.density : "medium",
    zoom: null, // CSS px per cell in the channel view; null: fit the box
  };
  const layers = new Map(); // key -> layer state
  const byStem = new Map();
  const statsRequested = new Set(); // statistics scripts asked for
  const byName = new Map();
  let firstDrawn = false;

  function fmt(v, digits = 4) {
    if (v === null || v === undefined) return "—";
    if (Number.isNaN(v)) return "NaN";
    if (!Number.isFinite(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a < 1e-4 || a >= 1e5) {
      const [m, e] = v.toExponential(digits - 1).split("e");
      return `${m.replace(/\.?0+$/, "")}e${e}`;
    }
    const s = v.toPrecision(digits);
    return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
  }

  // The two ends of a range, with more digits where four would print different ends alike
  // (featuremaps.render.scaling.format_ends): a narrow real range must not read "27.71 … 27.71".
  function fmtEnds(lo, hi) {
    let a = fmt(lo);
    let b = fmt(hi);
    for (let d = 5; a === b && lo !== hi && d <= 17; d++) {
      a = fmt(lo, d);
      b = fmt(hi, d);
    }
    return [a, b];
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function randomMark() {
    const mark = el("span", "rw-mark", RANDOM_TEXT);
    mark.title = "an untrained network: these maps are not what a trained model computes";
    return mark;
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
    // note: what the PNG legends say of the range, decided in Python (render.scaling): no
    // finite values (ends "n/a"), or constant within the dtype's resolution (one colour).
    if (state.scale === "fixed" && cfg.fixed) {
      const [lo, hi] = cfg.fixed;
      return { mode: "fixed", lo, hi, signed: cfg.fixedSigned, note: null };
    }
    if (state.scale === "global" && cfg.global) {
      const signed = signedLayer || cfg.globalSigned;
      const [lo, hi] = signed ? centred(cfg.global[0], cfg.global[1]) : cfg.global;
      const note = L.rangeNote === NO_FINITE ? NO_FINITE : cfg.globalNote;
      return { mode: "global", lo, hi, signed, note };
    }
    if (state.scale === "channel") {
      return { mode: "channel", lo: null, hi: null, signed: signedLayer, note: null };
    }
    const lo = L.low === null ? 0 : L.low;
    const hi = L.high === null ? 0 : L.high;
    const [a, b] = signedLayer ? centred(lo, hi) : [lo, hi];
    return { mode: "layer", lo: a, hi: b, signed: signedLayer, note: L.rangeNote };
  }

  // Whether channel c is drawn in one colour: its range (or the layer's, unless per channel)
  // is constant, and the colour range is that range itself, not one centred on 0.
  function flatOf(L, sc, c) {
    if (sc.signed) return false;
    if (sc.mode === "channel") return L.constantChannels.has(c);
    return sc.note !== null && sc.note !== NO_FINITE;
  }

  // The exact (float32) range of channel c of a layer: from its data file for shown channels,
  // from the statistics of every channel otherwise.
  function channelRange(L, c) {
    const i = L.shownIndex.get(c);
    if (i !== undefined && L.ranges) return L.ranges[i] || [null, null];
    if (L.stats) return [L.stats.min[c], L.stats.max[c]];
    return [null, null];
  }

  function rangeOf(L, sc, c) {
    if (sc.mode !== "channel") return [sc.lo, sc.hi];
    const r = channelRange(L, c);
    const lo = r[0] === null ? 0 : r[0];
    const hi = r[1] === null ? 0 : r[1];
    return sc.signed ? centred(lo, hi) : [lo, hi];
  }

  // A channel's own range as its caption says it: "const v" when constant, else its ends.
  function channelText(L, c, lo, hi) {
    const r = channelRange(L, c);
    if (r[0] === null) return "no finite values";
    if (r[0] === r[1] || L.constantChannels.has(c)) return `const ${fmt(r[0])}`;
    return fmtEnds(lo, hi).join(" … ");
  }

  function cmapOf(sc) {
    return sc.signed ? state.div : state.seq;
  }

  // Where each value sits on the colour scale, as featuremaps.render.scaling puts it: clipped to
  // [lo, hi]; a value equal to a bound gets exactly that bound's end (compared after rounding
  // the bound like the data, see toHalf; exact float32 values are compared as they are); a
  // constant range gives its value the centre colour (symmetric) or the low end.
  function scaleOf(lo, hi, symmetric, exact, constant = false) {
    const lo2 = exact ? Math.fround(lo) : toHalf(lo);
    const hi2 = exact ? Math.fround(hi) : toHalf(hi);
    const width = hi - lo;
    return { lo, hi, lo2, hi2, flat: constant || !(lo2 < hi2), width, symmetric };
  }

  // t in [0, 1] for x (finite), by the rule above.
  function place(s, x) {
    if (s.flat) return x > s.hi2 ? 1 : x < s.lo2 ? 0 : s.symmetric ? 0.5 : 0;
    if (x <= s.lo2) return 0;
    if (x >= s.hi2) return 1;
    const t = (x - s.lo) / s.width;
    return t < 0 ? 0 : t > 1 ? 1 : t;
  }

  // Paint values[offset .. offset + n) into an ImageData.
  function paint(image, values, offset, s, words) {
    const out = new Uint32Array(image.data.buffer);
    const n = out.length;
    const { lo, lo2, hi2, flat } = s;
    const scale = s.width > 0 ? 255 / s.width : 0;
    const flatIndex = s.symmetric ? 128 : 0;
    for (let j = 0; j < n; j++) {
      const x = values[offset + j];
      let idx;
      if (x !== x || x === Infinity || x === -Infinity) idx = 256; // NaN/Inf: the magenta entry
      else if (flat) idx = x > hi2 ? 255 : x < lo2 ? 0 : flatIndex;
      else if (x <= lo2) idx = 0;
      else if (x >= hi2) idx = 255;
      else {
        idx = ((x - lo) * scale + 0.5) | 0; // round(t * 255)
        if (idx < 0) idx = 0;
        else if (idx > 255) idx = 255;
      }
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
    if (sc.note === NO_FINITE) text += ` · range n/a (${NO_FINITE})`;
    else if (sc.note) text += ` · range ${fmt(sc.lo)} … ${fmt(sc.hi)} · ${sc.note}`;
    else if (sc.mode !== "channel") text += ` · range ${fmtEnds(sc.lo, sc.hi).join(" … ")}`;
    return text;
  }

  function updateLegend(L, sc) {
    const legend = L.section.querySelector(".legend");
    if (!legend) return;
    L.legendDrawn = true;
    drawBar(legend.querySelector(".bar-canvas"), cmapOf(sc));
    const ends = sc.note ? [fmt(sc.lo), fmt(sc.hi)] : fmtEnds(sc.lo, sc.hi);
    const [low, mid, high] =
      sc.mode === "channel"
        ? sc.signed ? ["-max|x|", "0", "+max|x|"] : ["min", "", "max"]
        : sc.note === NO_FINITE
          ? ["n/a", "", "n/a"]
          : [ends[0], sc.signed ? "0" : "", ends[1]];
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

  // Tile sizes follow the density control: "run" keeps the run's column count (as the PNGs);
  // the others aim at a tile width and fill the main column with as many columns as fit.
  // Maps smaller than the target are enlarged by a whole factor (no blurred cells).
  const TILE_PAD = 4;
  const TILE_GAP = 4;
  let mainWidth = 0;

  function measureMain(L) {
    if (!mainWidth) mainWidth = L.tiles.clientWidth || 800;
    return mainWidth;
  }

  function tileLayout(L, k, h, w) {
    const width = measureMain(L);
    const side = Math.max(h, w, 1);
    if (state.density === "run") {
      const cols = Math.min(cfg.columns, k) || 1;
      const fit = (width - (cols - 1) * TILE_GAP) / cols - TILE_PAD;
      return { cols, tw: Math.max(8, Math.min(w * tileScale(h, w), fit)) };
    }
    const target = DENSITY[state.density];
    const factor = Math.max(tileScale(h, w), Math.floor(target / side));
    let tw = side * factor > target * 1.5 ? (target * w) / side : w * factor;
    tw = Math.max(8, Math.min(tw, width - TILE_PAD));
    const cols = Math.max(1, Math.min(k, Math.floor((width + TILE_GAP) / (tw + TILE_PAD + TILE_GAP))));
    return { cols, tw };
  }

  function captionHeight() {
    return state.scale === "channel" ? 30 : 16;
  }

  function reserve(L) {
    // Keep the page from jumping when tiles arrive: reserve their height in advance.
    const h = L.shape ? L.shape[1] : 0;
    const w = L.shape ? L.shape[2] : 0;
    const { cols, tw } = tileLayout(L, L.shown.length, h, w);
    const rows = Math.ceil(L.shown.length / cols);
    L.tiles.style.minHeight = `${rows * ((tw * h) / Math.max(w, 1) + TILE_PAD + captionHeight() + TILE_GAP)}px`;
  }

  function buildTiles(L) {
    const [k, h, w] = L.dataShape;
    const { cols, tw } = tileLayout(L, k, h, w);
    L.tiles.textContent = "";
    L.tiles.style.minHeight = "";
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
      const box = el("div", "tile-box");
      const canvas = el("canvas", "pixelated");
      canvas.width = w;
      canvas.height = h;
      canvas.style.width = `${tw}px`;
      canvas.style.height = `${(tw * h) / Math.max(w, 1)}px`;
      box.append(canvas);
      if (RANDOM) box.append(randomMark());
      const cap = el("figcaption");
      cap.append(el("span", "ch", `#${L.shown[i]}`), el("span", "range"));
      fig.append(box, cap);
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
    L.tiles.classList.toggle("per-channel", sc.mode === "channel");
    for (let i = 0; i < k; i++) {
      const c = L.shown[i];
      const [lo, hi] = rangeOf(L, sc, c);
      const ctx = L.canvases[i].getContext("2d");
      const image = ctx.createImageData(w, h);
      const flat = flatOf(L, sc, c);
      paint(image, L.values, i * h * w, scaleOf(lo, hi, sc.signed, false, flat), words);
      ctx.putImageData(image, 0, 0);
      L.captions[i].textContent = sc.mode !== "channel" ? "" : channelText(L, c, lo, hi);
    }
    updateLegend(L, sc);
    L.dirty = false;
    L.tiles.dataset.state = "drawn";
    if (!firstDrawn) {
      firstDrawn = true;
      performance.mark("featuremaps-first-layer");
      document.documentElement.dataset.firstLayerMs = performance.now().toFixed(1);
    }
    for (const fn of L.waiting.splice(0)) fn();
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

  // Run fn once the layer's values are here (at once if they are), loading them first.
  function whenLoaded(L, fn) {
    if (L.values) {
      fn();
      return;
    }
    if (!L.data) return;
    L.waiting.push(fn);
    request(L, true);
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
    if (L.visible || L.waiting.length) draw(L);
  }

  function layerStats(stem, stats) {
    const L = byStem.get(stem);
    if (!L) return;
    L.stats = stats;
    const details = L.section.querySelector("details.stats");
    if (details && details.open) buildTable(L);
    for (const fn of L.statsWaiting.splice(0)) fn();
  }

  function requestStats(L, then) {
    if (L.stats) {
      if (then) then();
      return;
    }
    if (then) L.statsWaiting.push(then);
    // One script holds every layer's statistics: it is asked for once, by the first layer.
    if (!L.statsFile || statsRequested.has(L.statsFile)) return;
    statsRequested.add(L.statsFile);
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
    const n = L.stats.mean.length;
    const table = el("table", "stats-table");
    const head = el("tr");
    // A run made with --filters adds each channel's filter norms (null for layers without).
    const norms = L.stats.filter_l1 && L.stats.filter_l1.some((v) => v !== null) ? ["filter_l1", "filter_l2"] : [];
    const columns = [...COLUMNS, ...norms.map((key) => [key, key.replace("_", " ")])];
    for (const [key, label] of columns) {
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
      // Every channel opens: the shown ones from the report's data, the others from the run's
      // arrays file when the run saved one (the channel view says how).
      const b = el("button", "open", `#${c}`);
      b.type = "button";
      b.dataset.channel = String(c);
      if (L.shownIndex.has(c)) b.title = "open this channel";
      else {
        b.classList.add("not-stored");
        b.title = "open this channel (not drawn as a tile: its values are not stored in the report)";
      }
      first.append(b);
      tr.append(first);
      for (const key of ["mean", "std", "min", "max"]) {
        const v = L.stats[key][c];
        const td = el("td", "num", fmt(v));
        if (v !== null) td.title = String(v);
        tr.append(td);
      }
      const z = L.stats.zeros[c];
      tr.append(el("td", "num", z === null ? "—" : `${(100 * z).toFixed(1)}%`));
      for (const key of norms) {
        const v = L.stats[key][c];
        const td = el("td", "num", fmt(v));
        if (v !== null) td.title = String(v);
        tr.append(td);
      }
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
      if (button) openChannel(L, Number(button.dataset.channel));
    });
  }

  // ---------------------------------------------------------------- channel view
  const dialog = document.getElementById("fm-view");
  const viewPort = document.getElementById("fm-view-port");
  const viewMap = document.getElementById("fm-view-map");
  const viewOver = document.getElementById("fm-view-over");
  const viewInput = document.getElementById("fm-view-input");
  const rfBox = document.getElementById("fm-view-rf");
  const rfText = document.getElementById("fm-view-rf-text");
  const opacity = document.getElementById("fm-view-opacity");
  const threshold = document.getElementById("fm-view-threshold");
  const thresholdOut = document.getElementById("fm-view-threshold-value");
  const readout = document.getElementById("fm-readout");
  const zoomLevel = document.getElementById("fm-zoom-level");
  const missing = document.getElementById("fm-view-missing");
  const pinButton = document.getElementById("fm-view-pin");
  let view = null; // { L, c, z }

  // Where the values of channel c come from: the report's float16 data for shown channels, the
  // run's float32 arrays file for channels read from it; null when the page has neither.
  function channelSource(L, c) {
    const i = L.shownIndex.get(c);
    if (i !== undefined && L.values) {
      const [, h, w] = L.dataShape;
      return { values: L.values, offset: i * h * w, exact: false, h, w };
    }
    const extra = L.extra.get(c);
    if (extra) return { values: extra.values, offset: 0, exact: true, h: extra.h, w: extra.w };
    return null;
  }

  // The overlay's threshold means what featuremaps.render.overlay(threshold=...) means: a cell
  // whose place on the colour scale (see place()) is below it is left transparent, so only strong
  // responses show. NaN/Inf cells have no place on the scale and stay drawn (magenta). Returns
  // how many cells were hidden.
  function hideBelow(image, values, offset, s, threshold) {
    if (!(threshold > 0)) return 0;
    const out = new Uint32Array(image.data.buffer);
    let hidden = 0;
    for (let j = 0; j < out.length; j++) {
      const x = values[offset + j];
      if (x !== x || x === Infinity || x === -Infinity) continue;
      if (place(s, x) < threshold) {
        out[j] = 0; // transparent black
        hidden++;
      }
    }
    return hidden;
  }

  function paintChannel(canvas, L, c, src, threshold) {
    const sc = layerScale(L);
    const [lo, hi] = rangeOf(L, sc, c);
    const s = scaleOf(lo, hi, sc.signed, src.exact, flatOf(L, sc, c));
    canvas.width = src.w;
    canvas.height = src.h;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(src.w, src.h);
    paint(image, src.values, src.offset, s, packed(cmapOf(sc)));
    const hidden = hideBelow(image, src.values, src.offset, s, threshold);
    ctx.putImageData(image, 0, 0);
    return hidden;
  }

  function drawOverlay() {
    if (!view) return;
    const src = channelSource(view.L, view.c);
    if (!src) return;
    const t = Number(threshold.value) / 100;
    const hidden = paintChannel(viewOver, view.L, view.c, src, t);
    const n = src.h * src.w;
    viewOver.dataset.hidden = String(hidden);
    thresholdOut.textContent = `${t.toFixed(2)} (${n - hidden} of ${n} cells shown)`;
  }

  // ---- zoom and pan: the map sits in a scrolling box; zoom is CSS px per map cell.
  function viewBox() {
    const room = dialog.clientWidth - 36; // the dialog's padding and border
    return Math.max(120, Math.min(VIEW_SIZE, room > 0 ? room : VIEW_SIZE));
  }

  function fitZoom(h, w) {
    const z = viewBox() / Math.max(h, w, 1);
    return z >= 1 ? Math.floor(z) : z; // whole factors keep every cell the same size
  }

  function zoomText(z) {
    return z >= 1 ? `${+z.toFixed(2)} px per cell` : `1 px per ${+(1 / z).toFixed(2)} cells`;
  }

  // Set the zoom, keeping the map point under (ax, ay) (viewport px; default: its centre) still.
  function setZoom(z, ax, ay) {
    if (!view || !view.src) return;
    const { h, w } = view.src;
    const fit = fitZoom(h, w);
    const zmin = Math.min(fit, 1);
    const zmax = Math.max(ZOOM_MAX, fit);
    const next = Math.min(zmax, Math.max(zmin, z));
    const box = viewBox();
    const old = view.z || fit;
    const px = ax === undefined ? Math.min(box, w * fit) / 2 : ax;
    const py = ay === undefined ? Math.min(box, h * fit) / 2 : ay;
    const cellX = (viewPort.scrollLeft + px) / old;
    const cellY = (viewPort.scrollTop + py) / old;
    view.z = next;
    viewMap.style.width = `${w * next}px`;
    viewMap.style.height = `${h * next}px`;
    // The box keeps its fitted size while zooming, so nothing around it moves.
    viewPort.style.width = `${Math.min(box, w * fit)}px`;
    viewPort.style.height = `${Math.min(box, h * fit)}px`;
    viewPort.scrollLeft = cellX * next - px;
    viewPort.scrollTop = cellY * next - py;
    viewPort.dataset.zoom = String(next);
    zoomLevel.textContent = zoomText(next);
    state.zoom = next === fit ? null : next;
    writeAddress();
  }

  function zoomBy(factor) {
    if (view) setZoom((view.z || 1) * factor);
  }

  viewPort.addEventListener(
    "wheel",
    (ev) => {
      if (!view) return;
      ev.preventDefault();
      const rect = viewPort.getBoundingClientRect();
      const factor = Math.pow(1.25, -Math.sign(ev.deltaY));
      setZoom((view.z || 1) * factor, ev.clientX - rect.left, ev.clientY - rect.top);
    },
    { passive: false },
  );
  let drag = null;
  viewPort.addEventListener("pointerdown", (ev) => {
    if (ev.pointerType !== "mouse" || ev.button !== 0) return; // touch scrolls natively
    drag = { x: ev.clientX, y: ev.clientY, left: viewPort.scrollLeft, top: viewPort.scrollTop };
    viewPort.setPointerCapture(ev.pointerId);
  });
  viewPort.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    viewPort.scrollLeft = drag.left - (ev.clientX - drag.x);
    viewPort.scrollTop = drag.top - (ev.clientY - drag.y);
  });
  const endDrag = () => {
    drag = null;
  };
  viewPort.addEventListener("pointerup", endDrag);
  viewPort.addEventListener("pointercancel", endDrag);
  document.getElementById("fm-zoom-in").addEventListener("click", () => zoomBy(1.25));
  document.getElementById("fm-zoom-out").addEventListener("click", () => zoomBy(0.8));
  document.getElementById("fm-zoom-fit").addEventListener("click", () => view && view.src && setZoom(fitZoom(view.src.h, view.src.w)));
  document.getElementById("fm-zoom-one").addEventListener("click", () => setZoom(1));

  function drawView() {
    if (!view) return;
    const { L, c } = view;
    const src = channelSource(L, c);
    const sc = layerScale(L);
    const [lo, hi] = rangeOf(L, sc, c);
    document.getElementById("fm-view-legend").textContent =
      `${legendText(L, sc)}${sc.mode === "channel" ? ` · this channel: ${channelText(L, c, lo, hi)}` : ""}`;
    view.src = src;
    dialog.classList.toggle("missing", !src);
    missing.hidden = Boolean(src);
    if (!src) {
      showMissing(L, c);
      renderPins();
      return;
    }
    paintChannel(viewMap, L, c, src, 0); // the map itself always shows every cell
    drawOverlay();
    setZoom(view.z || state.zoom || fitZoom(src.h, src.w));
    renderPins();
  }

  function showMissing(L, c) {
    const k = L.shown.length;
    const total = L.shape ? L.shape[0] : k;
    let text =
      `Channel #${c} is not drawn as a tile, so its values are not in this report: the report ` +
      `keeps the ${k} channels shown of ${total} (storing every channel of every layer would ` +
      `make its data about ${fmt(cfg.allChannelsFactor)} times larger).`;
    if (L.arrayError) text += ` ${L.arrayError}`;
    else if (cfg.arrays) text += " Pick the run's arrays file below to read it from the exact float32 values.";
    else text += ` Run featuremaps again with --save-arrays to open any channel here, or with --channels ${c}, to draw it.`;
    document.getElementById("fm-view-missing-text").textContent = text;
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

  // The input region the hovered cell sees: its receptive field, centred on the cell's centre.
  // Input pixel i covers [i, i + 1), so a field of R pixels centred on pixel p starts at
  // p - (R - 1) / 2 and is R wide. Parts beyond the image are padding; the box is clipped there.
  function showField(row, col) {
    const g = view.L.geometry;
    const W = viewInput ? viewInput.naturalWidth : 0;
    const H = viewInput ? viewInput.naturalHeight : 0;
    if (!g || !W || !H) {
      rfBox.hidden = true;
      rfText.textContent = viewInput ? "no receptive-field geometry is known for this layer" : "";
      return;
    }
    const [sy, sx] = g.stride;
    const [oy, ox] = g.offset;
    const [ry, rx] = g.receptive_field;
    const cy = oy + sy * row;
    const cx = ox + sx * col;
    const top = cy - (ry - 1) / 2;
    const left = cx - (rx - 1) / 2;
    rfBox.style.top = `${(100 * top) / H}%`;
    rfBox.style.left = `${(100 * left) / W}%`;
    rfBox.style.height = `${(100 * ry) / H}%`;
    rfBox.style.width = `${(100 * rx) / W}%`;
    rfBox.dataset.box = JSON.stringify([top, left, ry, rx]);
    rfBox.hidden = false;
    const r0 = Math.max(0, Math.ceil(top));
    const r1 = Math.min(H - 1, Math.floor(top + ry - 1));
    const c0 = Math.max(0, Math.ceil(left));
    const c1 = Math.min(W - 1, Math.floor(left + rx - 1));
    const clipped = top < 0 || left < 0 || top + ry > H || left + rx > W;
    rfText.textContent =
      `cell (${row}, ${col}) sees input rows ${r0}–${r1}, cols ${c0}–${c1}: a ${fmt(ry)}×${fmt(rx)} px ` +
      `field centred on (${fmt(cy)}, ${fmt(cx)})${clipped ? ", partly beyond the image (padding)" : ""}`;
  }

  function showViewStats() {
    const target = document.getElementById("fm-view-stats");
    const { L, c } = view;
    if (!L.stats) {
      target.textContent = "";
      requestStats(L, () => {
        if (view && view.L === L) {
          showViewStats();
          showFilter(L, view.c);
        }
      });
      return;
    }
    const z = L.stats.zeros[c];
    target.textContent =
      `channel #${c} (all values, exact): mean ${fmt(L.stats.mean[c])} · std ${fmt(L.stats.std[c])} · ` +
      `min ${fmt(L.stats.min[c])} · max ${fmt(L.stats.max[c])} · zeros ${z === null ? "—" : `${(100 * z).toFixed(1)}%`}`;
  }

  // ---- the filter behind the channel (a run made with --filters): its part of the layer's
  // filter sheet PNG, cut out by the sheet's layout (featuremaps.render.filters.FilterSheet.box)
  // and enlarged by whole factors without smoothing. The page holds no weights of its own.
  const FILTER_SIZE = 160; // CSS px: a filter is enlarged to about this size
  const filterFigure = document.getElementById("fm-view-filter");
  const filterCanvas = document.getElementById("fm-view-filter-map");
  const filterText = document.getElementById("fm-view-filter-text");
  const sheets = new Map(); // sheet path -> Image

  function filterBox(F, c) {
    const lay = F.layout;
    if (lay.type === "rows") {
      if (c < 0 || c >= F.filters) return null;
      return [lay.top + Math.floor(c / lay.per_row) * lay.row_height, lay.left, lay.row_height, lay.width];
    }
    if (c < 0 || c >= F.shown) return null; // the sheet shows the first filters by index
    const row = Math.floor(c / lay.columns);
    const col = c % lay.columns;
    return [lay.top + row * lay.step_y, lay.left + col * lay.step_x, lay.height, lay.width];
  }

  function filterNorms(L, c) {
    const s = L.stats;
    if (!s || !s.filter_l1 || s.filter_l1[c] === null || s.filter_l1[c] === undefined) return "";
    return ` (L1 ${fmt(s.filter_l1[c])} · L2 ${fmt(s.filter_l2[c])})`;
  }

  function showFilter(L, c) {
    if (!filterFigure) return;
    const F = L.filter;
    filterFigure.hidden = !F;
    if (!F) return;
    filterFigure.dataset.channel = String(c);
    const box = filterBox(F, c);
    const about = F.kind === "rgb" || F.kind === "kernels" || F.kind === "rows" ? `${F.note}.` : `its row of the sheet: ${F.note}.`;
    if (!box) {
      filterCanvas.hidden = true;
      filterText.textContent =
        `filter #${c}${filterNorms(L, c)} is not on the layer's filter sheet (it shows the first ${F.shown} of ${F.filters}).`;
      return;
    }
    const [y, x, h, w] = box;
    const zx = Math.max(1, Math.floor(FILTER_SIZE / Math.max(h, w)));
    const zy = Math.max(zx, Math.ceil(12 / h)); // one-pixel rows of a heat map stay visible
    filterText.textContent = `filter #${c}${filterNorms(L, c)}: ${about} ${F.scale}.`;
    let image = sheets.get(F.image);
    if (!image) {
      image = new Image();
      image.src = F.image;
      sheets.set(F.image, image);
    }
    const draw = () => {
      if (!view || view.L !== L || view.c !== c) return;
      filterCanvas.width = w * zx;
      filterCanvas.height = h * zy;
      const ctx = filterCanvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(image, x, y, w, h, 0, 0, w * zx, h * zy);
      filterCanvas.dataset.box = JSON.stringify(box);
      filterCanvas.dataset.zoom = JSON.stringify([zy, zx]);
      filterCanvas.hidden = false;
    };
    if (image.complete && image.naturalWidth) draw();
    else image.addEventListener("load", draw, { once: true });
  }

  function openChannel(L, c) {
    const show = () => {
      const same = view && view.L === L;
      view = { L, c, z: view && same ? view.z : null };
      const h = L.shape ? L.shape[1] : 0;
      const w = L.shape ? L.shape[2] : 0;
      document.getElementById("fm-view-title").textContent = `${L.name} · channel #${c} · ${h}×${w}`;
      readout.textContent = `Hover the map to read the value under the cursor (${precisionOf(L, c)}).`;
      delete readout.dataset.row;
      delete readout.dataset.col;
      delete readout.dataset.value;
      rfBox.hidden = true;
      rfText.textContent = "";
      if (!dialog.open) dialog.showModal();
      markCurrent(L.key);
      drawView();
      placeOverlay(L, h, w);
      showViewStats();
      showFilter(L, c);
      viewOver.style.opacity = String(Number(opacity.value) / 100);
      writeAddress();
    };
    if (L.shownIndex.has(c)) whenLoaded(L, show);
    else requestStats(L, show); // a channel not drawn as a tile: its range comes from the statistics
  }

  function precisionOf(L, c) {
    return L.shownIndex.has(c) ? `${cfg.precision} copies of the outputs` : "exact float32 values from the arrays file";
  }

  function stepChannel(d) {
    if (!view) return;
    const { L, c } = view;
    const total = L.shape ? L.shape[0] : 0;
    let next = null;
    if (arrays.header && L.layout === "NCHW") next = c + d >= 0 && c + d < total ? c + d : null;
    else {
      const i = L.shownIndex.get(c);
      if (i !== undefined) next = L.shown[i + d] === undefined ? null : L.shown[i + d];
      else {
        const sorted = L.shown.slice().sort((a, b) => a - b);
        next = d > 0 ? sorted.find((x) => x > c) : sorted.reverse().find((x) => x < c);
        if (next === undefined) next = null;
      }
    }
    if (next === null) return;
    if (!L.shownIndex.has(next) && arrays.header && !L.extra.has(next)) {
      readArrayChannel(L, next).then(() => openChannel(L, next), () => openChannel(L, next));
    } else openChannel(L, next);
  }

  function hover(ev) {
    if (!view || !view.src) return;
    const canvas = ev.currentTarget;
    const rect = canvas.getBoundingClientRect();
    const { h, w, values, offset } = view.src;
    const col = Math.min(w - 1, Math.max(0, Math.floor(((ev.clientX - rect.left) / rect.width) * w)));
    const row = Math.min(h - 1, Math.max(0, Math.floor(((ev.clientY - rect.top) / rect.height) * h)));
    const v = values[offset + row * w + col];
    readout.dataset.row = String(row);
    readout.dataset.col = String(col);
    readout.dataset.value = String(v);
    let text = `(row ${row}, col ${col}) = ${fmt(v)}`;
    if (!Number.isFinite(v) && view.L.overflow) text += " (NaN/Inf, or beyond the float16 range)";
    readout.textContent = view.src.exact
      ? `${text} · exact float32 value from the arrays file`
      : `${text} · ${cfg.precision} copy of the output value (about 3 significant digits)`;
    showField(row, col);
  }

  viewMap.addEventListener("mousemove", hover);
  viewOver.addEventListener("mousemove", hover);
  opacity.addEventListener("input", () => {
    viewOver.style.opacity = String(Number(opacity.value) / 100);
  });
  threshold.addEventListener("input", drawOverlay);
  document.getElementById("fm-view-close").addEventListener("click", () => dialog.close());
  document.getElementById("fm-view-prev").addEventListener("click", () => stepChannel(-1));
  document.getElementById("fm-view-next").addEventListener("click", () => stepChannel(1));
  dialog.addEventListener("close", () => {
    view = null;
    writeAddress();
  });
  if (!viewInput) document.getElementById("fm-view-overlay").parentElement.hidden = true;

  // ---- channels read from the run's arrays file (--save-arrays), which the user picks: a page
  // from file:// may read a file only when the user chooses it. safetensors is an 8-byte
  // little-endian header length, a JSON header (dtype, shape, data_offsets per name), the data.
  const arrays = { file: null, header: null, start: 0 };
  const arraysInput = document.getElementById("fm-arrays-file");

  async function readArraysHeader(file) {
    const head = new DataView(await file.slice(0, 8).arrayBuffer());
    const n = Number(head.getBigUint64(0, true));
    const text = new TextDecoder().decode(await file.slice(8, 8 + n).arrayBuffer());
    arrays.file = file;
    arrays.header = JSON.parse(text);
    arrays.start = 8 + n;
  }

  async function readArrayChannel(L, c) {
    const entry = arrays.header[L.name];
    if (!entry || entry.dtype !== "F32" || L.layout !== "NCHW" || entry.shape.length !== 4) {
      L.arrayError = `The file ${arrays.file.name} has no float32 (N, C, H, W) array named ${JSON.stringify(L.name)}; pick the arrays file of this run.`;
      throw new Error(L.arrayError);
    }
    const [, C, H, W] = entry.shape;
    const begin = arrays.start + entry.data_offsets[0] + (cfg.sample * C + c) * H * W * 4;
    const buffer = await arrays.file.slice(begin, begin + H * W * 4).arrayBuffer();
    let values;
    if (LITTLE) values = new Float32Array(buffer);
    else {
      const dv = new DataView(buffer);
      values = new Float32Array(H * W);
      for (let j = 0; j < values.length; j++) values[j] = dv.getFloat32(4 * j, true);
    }
    L.arrayError = null;
    L.extra.set(c, { values, h: H, w: W });
  }

  if (arraysInput) {
    arraysInput.addEventListener("change", async () => {
      const file = arraysInput.files && arraysInput.files[0];
      if (!file || !view) return;
      const { L, c } = view;
      try {
        await readArraysHeader(file);
        await readArrayChannel(L, c);
      } catch (err) {
        if (!L.arrayError) L.arrayError = `Could not read ${file.name}: ${err.message}`;
      }
      if (view && view.L === L && view.c === c) openChannel(L, c);
    });
  }

  // ---- pins: channels kept side by side in the channel view, drawn with the current scale.
  const pins = []; // { L, c }
  const pinRow = document.getElementById("fm-pin-row");
  const pinSection = document.getElementById("fm-pins");
  const PIN_SIZE = 150;

  function pinIndex(L, c) {
    return pins.findIndex((p) => p.L === L && p.c === c);
  }

  function togglePin() {
    if (!view) return;
    const at = pinIndex(view.L, view.c);
    if (at >= 0) pins.splice(at, 1);
    else pins.push({ L: view.L, c: view.c });
    renderPins();
    writeAddress();
  }

  function renderPins() {
    pinRow.textContent = "";
    pinSection.hidden = pins.length === 0;
    if (view) {
      const pinned = pinIndex(view.L, view.c) >= 0;
      pinButton.textContent = pinned ? "unpin" : "pin";
      pinButton.setAttribute("aria-pressed", String(pinned));
    }
    for (const p of pins) {
      const fig = el("figure", "pin");
      fig.dataset.key = String(p.L.key);
      fig.dataset.channel = String(p.c);
      if (view && view.L === p.L && view.c === p.c) fig.classList.add("current");
      const box = el("div", "tile-box");
      const canvas = el("canvas", "pixelated");
      box.append(canvas);
      if (RANDOM) box.append(randomMark());
      const src = channelSource(p.L, p.c);
      if (src) {
        paintChannel(canvas, p.L, p.c, src, 0);
        const z = PIN_SIZE / Math.max(src.h, src.w, 1);
        const s = z >= 1 ? Math.floor(z) : z;
        canvas.style.width = `${src.w * s}px`;
        canvas.style.height = `${src.h * s}px`;
      } else if (p.L.shownIndex.has(p.c)) whenLoaded(p.L, renderPins);
      const open = el("button", "pin-open", `${p.L.name} #${p.c}`);
      open.type = "button";
      open.title = "open this channel";
      open.addEventListener("click", () => openChannel(p.L, p.c));
      canvas.addEventListener("click", () => openChannel(p.L, p.c));
      const drop = el("button", "pin-drop", "×");
      drop.type = "button";
      drop.setAttribute("aria-label", `unpin ${p.L.name} channel ${p.c}`);
      drop.addEventListener("click", () => {
        const at = pinIndex(p.L, p.c);
        if (at >= 0) pins.splice(at, 1);
        renderPins();
        writeAddress();
      });
      const cap = el("figcaption");
      cap.append(open, drop);
      fig.append(box, cap);
      pinRow.append(fig);
    }
  }

  pinButton.addEventListener("click", togglePin);
  document.getElementById("fm-pins-clear").addEventListener("click", () => {
    pins.length = 0;
    renderPins();
    writeAddress();
  });

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
    else renderPins();
  }

  // Tile sizes changed (density, window width): lay the tiles out again.
  function relayout() {
    mainWidth = 0;
    for (const L of layers.values()) {
      if (!L.data) continue;
      if (L.values) {
        L.canvases = null;
        L.dirty = true;
        if (L.visible) draw(L);
        else reserve(L);
      } else reserve(L);
    }
  }

  const scaleSelect = document.getElementById("fm-scale");
  if (!cfg.global) scaleSelect.querySelector("option[value=global]").disabled = true;
  scaleSelect.value = state.scale;
  scaleSelect.addEventListener("change", () => {
    state.scale = scaleSelect.value;
    redrawAll();
    writeAddress();
  });
  const seqSelect = document.getElementById("fm-cmap-seq");
  const divSelect = document.getElementById("fm-cmap-div");
  fillSelect(seqSelect, cfg.sequential, state.seq);
  fillSelect(divSelect, cfg.diverging, state.div);
  seqSelect.addEventListener("change", () => {
    state.seq = seqSelect.value;
    redrawAll();
    writeAddress();
  });
  divSelect.addEventListener("change", () => {
    state.div = divSelect.value;
    redrawAll();
    writeAddress();
  });
  const densitySelect = document.getElementById("fm-density");
  densitySelect.value = state.density;
  densitySelect.addEventListener("change", () => {
    state.density = densitySelect.value;
    prefs.density = state.density;
    savePrefs();
    relayout();
  });
  // The sticky bar's height, for the outline and the scroll positions under it.
  const controls = document.getElementById("fm-controls");
  function measureBar() {
    const sticky = getComputedStyle(controls).position === "sticky";
    document.documentElement.style.setProperty("--bar", `${sticky ? controls.offsetHeight : 0}px`);
  }
  measureBar();
  controls.querySelector("details.keys").addEventListener("toggle", measureBar);
  let lastWidth = window.innerWidth;
  window.addEventListener("resize", () => {
    if (Math.abs(window.innerWidth - lastWidth) < 40) return;
    lastWidth = window.innerWidth;
    measureBar();
    relayout();
  });

  const header = document.getElementById("fm-header");
  const headerToggle = document.getElementById("fm-header-toggle");
  function foldHeader(folded) {
    header.classList.toggle("folded", folded);
    headerToggle.setAttribute("aria-expanded", String(!folded));
    headerToggle.textContent = folded ? "show header" : "hide header";
  }
  foldHeader(Boolean(prefs.headerFolded));
  headerToggle.addEventListener("click", () => {
    prefs.headerFolded = !header.classList.contains("folded");
    savePrefs();
    foldHeader(prefs.headerFolded);
  });

  document.getElementById("fm-expand").addEventListener("click", () => {
    for (const d of document.querySelectorAll("#fm-outline details")) d.open = true;
  });
  document.getElementById("fm-collapse").addEventListener("click", () => {
    for (const d of document.querySelectorAll("#fm-outline details")) d.open = false;
  });

  // The prediction panel's bars (a style attribute in the page would break the CSP).
  for (const bar of document.querySelectorAll("#fm-prediction .p-fill")) {
    const p = Number(bar.dataset.p);
    bar.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
  }

  // ---------------------------------------------------------------- wiring
  const observer = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        const L = layers.get(Number(entry.target.dataset.key));
        L.visible = entry.isIntersecting;
        if (!L.visible) {
          const at = queue.indexOf(L); // scrolled past before its turn: do not load it now
          if (at >= 0 && !L.waiting.length) queue.splice(at, 1);
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
      layout: spec.layout,
      shown: spec.shown,
      shownIndex: new Map(spec.shown.map((c, i) => [c, i])),
      low: spec.low,
      high: spec.high,
      rangeNote: spec.rangeNote,
      constantChannels: new Set(spec.constantChannels),
      signed: spec.signed,
      data: spec.data,
      image: spec.image,
      geometry: spec.geometry,
      statsFile: spec.stats,
      filter: spec.filter || null, // the layer's filter sheet (a run made with --filters)
      section,
      tiles: section.querySelector(".tiles"),
      values: null,
      visible: false,
      dirty: false,
      waiting: [],
      statsWaiting: [],
      extra: new Map(), // channel -> float32 values read from the arrays file
      arrayError: null,
    };
    layers.set(L.key, L);
    byName.set(L.name, L);
    if (spec.stem) byStem.set(spec.stem, L);
    if (L.data) {
      reserve(L);
      observer.observe(section);
      onScreen.observe(section);
      L.tiles.addEventListener("click", (ev) => {
        const fig = ev.target.closest("figure.tile");
        if (fig) openChannel(L, Number(fig.dataset.channel));
      });
      L.tiles.addEventListener("keydown", (ev) => {
        const fig = ev.target.closest("figure.tile");
        if (fig && (ev.key === "Enter" || ev.key === " ")) {
          ev.preventDefault();
          openChannel(L, Number(fig.dataset.channel));
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

  // ---------------------------------------------------------------- outline, search, keys
  const outlineLinks = Array.from(document.querySelectorAll("#fm-outline li.entry > a"));
  const entries = outlineLinks.map((a, pos) => {
    const type = a.querySelector(".type").textContent;
    const shape = a.querySelector(".shape").textContent;
    const name = a.title;
    return {
      a,
      li: a.parentElement,
      key: Number(a.dataset.key),
      name,
      pos,
      text: `${name} ${type} ${shape} ${shape.replace(/×/g, "x")}`.toLowerCase(),
    };
  });
  const entryByKey = new Map(entries.map((e) => [e.key, e]));
  const keyByName = new Map(entries.map((e) => [e.name, e.key]));
  const outlineNodes = Array.from(document.querySelectorAll("#fm-outline li.node")).reverse();
  const search = document.getElementById("fm-search");
  const searchCount = document.getElementById("fm-search-count");
  let matches = null; // entries that match the search, in outline order; null: no search
  let savedOpen = null;
  let current = null; // the key of the layer last jumped to

  function filterOutline() {
    const start = performance.now();
    const tokens = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const details = Array.from(document.querySelectorAll("#fm-outline details"));
    if (!tokens.length) {
      matches = null;
      for (const e of entries) e.li.classList.remove("filtered-out");
      for (const li of outlineNodes) li.classList.remove("filtered-out");
      if (savedOpen) details.forEach((d, i) => (d.open = savedOpen[i]));
      savedOpen = null;
      searchCount.textContent = "";
    } else {
      if (!savedOpen) savedOpen = details.map((d) => d.open);
      matches = [];
      for (const e of entries) {
        const ok = tokens.every((t) => e.text.includes(t));
        e.li.classList.toggle("filtered-out", !ok);
        if (ok) matches.push(e);
      }
      // Deepest nodes first: a module shows when any of its records matches.
      for (const li of outlineNodes) {
        const any = li.querySelector("li.entry:not(.filtered-out)") !== null;
        li.classList.toggle("filtered-out", !any);
        if (any) li.firstElementChild.open = true;
      }
      searchCount.textContent = `${matches.length} of ${entries.length}`;
    }
    search.dataset.ms = (performance.now() - start).toFixed(2);
    search.dataset.matches = matches ? String(matches.length) : "";
  }
  search.addEventListener("input", filterOutline);

  function markCurrent(key) {
    const previous = document.querySelector("#fm-outline a[aria-current]");
    if (previous) previous.removeAttribute("aria-current");
    const e = entryByKey.get(key);
    if (!e) return;
    current = key;
    e.a.setAttribute("aria-current", "location");
    for (let d = e.a.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
    e.a.scrollIntoView({ block: "nearest" });
  }

  function goTo(key) {
    const section = document.getElementById(`L${key}`);
    if (!section) return;
    markCurrent(key);
    section.scrollIntoView({ block: "start" });
    const L = layers.get(key);
    if (L) request(L, true);
  }

  function navigate(key) {
    if (dialog.open) dialog.close();
    goTo(key);
    writeAddress();
  }

  // j/k: the next/previous layer of the outline (of the search's matches while searching).
  function stepLayer(d) {
    const list = matches || entries;
    if (!list.length) return;
    const at = current === null ? null : entryByKey.get(current);
    let next;
    if (!at) next = d > 0 ? list[0] : list[list.length - 1];
    else if (d > 0) next = list.find((e) => e.pos > at.pos);
    else next = list.slice().reverse().find((e) => e.pos < at.pos);
    if (next) navigate(next.key);
  }

  // ---- the address
  function writeAddress() {
    const parts = [];
    const L = view ? view.L : null;
    const key = L ? L.key : current;
    const e = key === null ? null : entryByKey.get(key);
    if (e) parts.push(`layer=${encodeURIComponent(e.name)}`);
    if (view) parts.push(`channel=${view.c}`);
    parts.push(`scale=${state.scale}`, `cmap=${encodeURIComponent(state.seq)}`, `div=${encodeURIComponent(state.div)}`);
    if (view && state.zoom) parts.push(`zoom=${+state.zoom.toFixed(4)}`);
    for (const p of pins) parts.push(`pin=${p.c}@${encodeURIComponent(p.L.name)}`);
    const hash = `#${parts.join("&")}`;
    if (hash !== location.hash) history.replaceState(null, "", hash);
  }

  function applyAddress() {
    const raw = location.hash.slice(1);
    if (showClassMaps(raw)) return;
    const legacy = /^L([0-9]+)$/.exec(raw); // links written before records were named in it
    const p = new URLSearchParams(legacy ? "" : raw);
    let redraw = false;
    const scale = p.get("scale");
    if (scale && SCALES.includes(scale) && scale !== state.scale && !scaleSelect.querySelector(`option[value=${scale}]`).disabled) {
      state.scale = scale;
      scaleSelect.value = scale;
      redraw = true;
    }
    const seq = p.get("cmap");
    if (seq && cfg.sequential.includes(seq) && seq !== state.seq) {
      state.seq = seqSelect.value = seq;
      redraw = true;
    }
    const div = p.get("div");
    if (div && cfg.diverging.includes(div) && div !== state.div) {
      state.div = divSelect.value = div;
      redraw = true;
    }
    const zoom = Number(p.get("zoom"));
    state.zoom = zoom > 0 && zoom <= ZOOM_MAX ? zoom : null;
    if (p.has("pin")) {
      pins.length = 0;
      for (const item of p.getAll("pin")) {
        const at = item.indexOf("@");
        const Lp = at > 0 ? byName.get(item.slice(at + 1)) : undefined;
        const c = Number(item.slice(0, at));
        if (Lp && Number.isInteger(c) && c >= 0 && c < (Lp.shape ? Lp.shape[0] : 0) && pinIndex(Lp, c) < 0) pins.push({ L: Lp, c });
      }
    }
    if (redraw) redrawAll();
    let key = legacy ? Number(legacy[1]) : null;
    const name = p.get("layer");
    if (name !== null && keyByName.has(name)) key = keyByName.get(name);
    const channel = p.get("channel");
    const L = key === null ? undefined : layers.get(key);
    if (key !== null) goTo(key);
    if (L && channel !== null && /^[0-9]+$/.test(channel) && Number(channel) < (L.shape ? L.shape[0] : 0)) {
      openChannel(L, Number(channel));
    } else {
      if (dialog.open) dialog.close();
      if (raw) writeAddress();
    }
  }
  window.addEventListener("hashchange", applyAddress);

  // Every class-map picture at one common scale (at most 1:1), so the inputs under the maps
  // come out the same size side by side: each picture is as wide as its legend text, so fitting
  // each to its card alone would draw the input smaller under a longer legend.
  const camPictures = Array.from(document.querySelectorAll("#fm-cams img.cam-picture"));
  function fitClassMaps() {
    if (camPictures.some((img) => !img.complete || !img.naturalWidth)) return;
    let k = 1;
    for (const img of camPictures) {
      const card = img.parentElement;
      const style = getComputedStyle(card);
      const room = card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      if (room > 0) k = Math.min(k, room / img.naturalWidth);
    }
    for (const img of camPictures) img.style.width = `${Math.floor(img.naturalWidth * k)}px`;
    document.getElementById("fm-cams").dataset.scale = k.toFixed(4);
  }
  if (camPictures.length) {
    for (const img of camPictures) img.addEventListener("load", fitClassMaps);
    fitClassMaps();
    window.addEventListener("resize", () => {
      for (const img of camPictures) img.style.width = "";
      fitClassMaps();
    });
  }

  // A link to the class-map panel (#fm-cams) or one layer's maps in it (#cams-<i>): scroll there
  // and mark the layer in the outline; the address keeps the link as it is.
  function showClassMaps(raw) {
    if (!/^(fm-cams|cams-[0-9]+)$/.test(raw)) return false;
    const target = document.getElementById(raw);
    if (!target) return false;
    if (dialog.open) dialog.close();
    if (target.dataset.key !== undefined) markCurrent(Number(target.dataset.key));
    target.scrollIntoView({ block: "start" });
    return true;
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t === search) {
      if (ev.key === "Enter") {
        ev.preventDefault();
        if (matches && matches.length) {
          search.blur(); // so that j/k step through the matches at once
          navigate(matches[0].key);
        }
      } else if (ev.key === "Escape") {
        ev.preventDefault();
        search.value = "";
        filterOutline();
        search.blur();
      } else if (ev.key === "ArrowDown" && matches && matches.length) {
        ev.preventDefault();
        matches[0].a.focus();
      }
      return;
    }
    if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
    if (dialog.open) {
      const actions = {
        ArrowRight: () => stepChannel(1),
        ArrowLeft: () => stepChannel(-1),
        "+": () => zoomBy(1.25),
        "=": () => zoomBy(1.25),
        "-": () => zoomBy(0.8),
        0: () => view && view.src && setZoom(fitZoom(view.src.h, view.src.w)),
        1: () => setZoom(1),
        p: togglePin,
      };
      const act = actions[ev.key];
      if (act) {
        ev.preventDefault();
        act();
      }
      return;
    }
    if (ev.key === "/") {
      ev.preventDefault();
      search.focus();
      search.select();
    } else if (ev.key === "j") stepLayer(1);
    else if (ev.key === "k") stepLayer(-1);
  });

  window.featuremaps = Object.freeze({ layerData, layerStats });
  applyAddress();
})();
