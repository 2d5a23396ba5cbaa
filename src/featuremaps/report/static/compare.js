// featuremaps compare: one read-out per layer for A, B and B−A at the cell under the pointer.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const data = JSON.parse(document.getElementById("compare-data").textContent);
  const fmt = (v) => (v === null ? "NaN/Inf" : Number(v).toPrecision(5));
  for (const section of document.querySelectorAll("section.compare-layer")) {
    const layer = data[Number(section.dataset.index)];
    const readout = section.querySelector("[data-role=readout]");
    const [h, w] = layer.shape;
    for (const picture of section.querySelectorAll("[data-role=map]")) {
      picture.addEventListener("mousemove", (event) => {
        const box = picture.getBoundingClientRect();
        const row = Math.min(h - 1, Math.floor(((event.clientY - box.top) / box.height) * h));
        const col = Math.min(w - 1, Math.floor(((event.clientX - box.left) / box.width) * w));
        if (layer.a === null) {
          readout.textContent = `cell (${row}, ${col}): values not kept (layer too large)`;
          return;
        }
        const a = layer.a[row][col];
        const b = layer.b[row][col];
        const d = a === null || b === null ? null : b - a;
        readout.dataset.row = String(row);
        readout.dataset.col = String(col);
        readout.textContent = `cell (${row}, ${col}): A ${fmt(a)}  B ${fmt(b)}  B−A ${fmt(d)}`;
      });
    }
  }
});
